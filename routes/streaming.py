"""The response that streams one call to its client, for every front.

A front gives it the call's `CallStream` and an encoder (event -> bytes in the front's own
framing: the seed's SSE, Ollama's NDJSON, OpenAI's SSE chunks). The response:

- notices a client that leaves, whatever the upstream's pace: a watcher task waits on
  `receive()` and, on `http.disconnect`, marks the stream gone and cancels the sending task
  with a plain `Task.cancel()` (the stream also yields to the loop every few reads, so the
  watcher runs even when every read and send completes at once);
- bounds what a slow client holds: a send waits while the client's socket buffer is full
  (uvicorn's flow control), and while it waits nothing more is read from upstream, so TCP
  pushes back on the model server; a client that takes nothing for `--send-timeout` seconds
  is given up on;
- sends a keep-alive (`ping`) while nothing else has gone out for `keepalive` seconds;
- always closes the call, which closes the upstream request and writes the record.

It is plain ASGI, not sse-starlette's EventSourceResponse: that one notices a hang-up through
an anyio cancel scope, which never landed while the upstream kept every await ready (issue 11:
1.1 GB read for a client that had left), and it opens a cancel scope per event sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from starlette.types import Message, Receive, Scope, Send

from calls.pipeline import CallStream, Event

# The scope key under which GatewayApp puts the server's own `send`, for stream bodies.
SERVER_SEND = "ollama_host.server_send"

Encode = Callable[[Event], bytes]


class CallStreamResponse:
    """Streams one call's events, encoded by its front; closing it always closes the call."""

    def __init__(
        self,
        stream: CallStream,
        encode: Encode,
        *,
        media_type: str,
        headers: Iterable[tuple[str, str]] = (),
        ping: bytes | None = None,
        keepalive: float = 15.0,
        send_timeout: float | None = None,
        tail: bytes = b"",
    ) -> None:
        self.stream = stream
        self.encode = encode
        self.raw_headers = [
            (b"content-type", media_type.encode("latin-1")),
            (b"x-request-id", stream.id.encode("latin-1")),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers),
        ]
        self.ping = ping
        self.keepalive = keepalive
        self.send_timeout = send_timeout
        # Bytes after the last event (OpenAI's `data: [DONE]`).
        self.tail = tail
        self._last_sent = 0.0
        # A send is under way (the client's socket may be full); the stream is over.
        self._sending = False
        self._over = False
        # Why the client is taken for gone: it hung up, or it stopped reading.
        self._left = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        if scope["method"] == "HEAD":
            # Headers only: a HEAD never reads a body, so it never streams one.
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await stream.aclose()
            return
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(self._watch(receive, task))
        minder = None
        if self.ping is not None or self.send_timeout is not None:
            minder = asyncio.ensure_future(self._mind(send, task))
        # Past the middleware, whose wrappers only look at the response start (GatewayApp).
        body_send: Send = scope.get(SERVER_SEND) or send
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            self._last_sent = loop.time()
            async for event in stream.events():
                data = self.encode(event)
                if data:
                    self._sending = True
                    await body_send({"type": "http.response.body", "body": data, "more_body": True})
                    self._sending = False
                    self._last_sent = loop.time()
                if stream.gone:
                    break
            if not stream.gone:
                await send({"type": "http.response.body", "body": self.tail, "more_body": False})
        except asyncio.CancelledError:
            # Only our own cancel means "the client left"; a shutdown's cancel goes on up.
            if not (self._left and task.uncancel() == 0):
                raise
        finally:
            # From here on the watcher and the minder cancel nothing: the close must run.
            self._over = True
            watcher.cancel()
            if minder is not None:
                minder.cancel()
            await stream.aclose()

    def _client_gone(self, task: asyncio.Task[object]) -> None:
        self.stream.gone = True
        if not self._over and not self._left:
            self._left = True
            task.cancel()

    async def _watch(self, receive: Receive, task: asyncio.Task[object]) -> None:
        message: Message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        self._client_gone(task)

    async def _mind(self, send: Send, task: asyncio.Task[object]) -> None:
        """Keep-alives whenever nothing else went out for `keepalive` seconds, and the end of
        a client that took nothing for `send_timeout` seconds."""
        loop = asyncio.get_running_loop()
        ping, every, patience = self.ping, self.keepalive, self.send_timeout
        step = min(t for t in (every if ping is not None else None, patience) if t is not None)
        while not self._over:
            due = self._last_sent + step
            await asyncio.sleep(max(0.0, due - loop.time()))
            idle = loop.time() - self._last_sent
            if self._sending:
                if patience is not None and idle >= patience:
                    self.stream.stalled(patience)
                    self._client_gone(task)
                    return
            elif ping is not None and idle >= every:
                self._last_sent = loop.time()
                await send({"type": "http.response.body", "body": ping, "more_body": True})
