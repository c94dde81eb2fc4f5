"""The response that streams one call to its client, for every front.

A front gives `stream_response` the streamed `Call` and its `Framing` (event -> bytes in the
front's own wire format: the seed's SSE, Ollama's NDJSON, OpenAI's SSE chunks; and the media
type, headers, keep-alive and last bytes that go with it). The response:

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
an anyio cancel scope, which never landed while the upstream kept every await ready (1.1 GB
read for a client that had left, in the fault catalogue), and it opens a cancel scope per
event sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from calls.events import Event
from queueing import Place

from .asking import queue_headers

# The scope key under which GatewayApp puts the server's own `send`, for stream bodies.
SERVER_SEND = "ollama_host.server_send"

SSE = "text/event-stream; charset=utf-8"
NDJSON = "application/x-ndjson"


class Framing(Protocol):
    """A front's wire format for one stream: the bytes of each event (b"" for an event it
    does not frame), and how the response around them is set up."""

    @property
    def media_type(self) -> str: ...

    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...

    @property
    def ping(self) -> bytes | None:
        """Sent while nothing else went out for --keepalive seconds (None: nothing)."""
        ...

    @property
    def tail(self) -> bytes:
        """Bytes after the last event (OpenAI's `data: [DONE]`)."""
        ...

    def __call__(self, event: Event) -> bytes: ...


class Streamed(Protocol):
    """What CallStreamResponse streams: a streamed `Call`, or a client's view of a resumable
    stream (routes/resuming.py)."""

    id: str
    gone: bool
    # Its place in the fair queue (queueing/), if it waits or waited at a capped upstream.
    place: Place | None

    def events(self) -> AsyncIterator[Event]: ...

    def stalled(self, seconds: float) -> None: ...

    async def aclose(self) -> None: ...


class SSEFraming:
    """What every Server-Sent Events framing shares: a subclass frames the events."""

    __slots__ = ()
    media_type = SSE
    # No caching, and no buffering by a proxy in between (nginx honours X-Accel-Buffering).
    headers: tuple[tuple[str, str], ...] = (
        ("Cache-Control", "no-cache, no-transform"),
        ("X-Accel-Buffering", "no"),
    )
    ping: bytes | None = b": keep-alive\n\n"
    tail = b""


class NDJSONFraming:
    """What every newline-delimited JSON framing shares (no keep-alive: a line that is not an
    object would break its clients)."""

    __slots__ = ()
    media_type = NDJSON
    headers: tuple[tuple[str, str], ...] = ()
    ping: bytes | None = None
    tail = b""


def stream_response(request: Request, call: Streamed, framing: Framing) -> CallStreamResponse:
    """The response that streams `call` in `framing`, with the app's keep-alive and send
    timeout."""
    settings = request.app.state.settings
    return CallStreamResponse(
        call, framing, keepalive=settings.keepalive, send_timeout=settings.send_timeout
    )


class CallStreamResponse:
    """Streams one call's events, framed by its front; closing it always closes the call."""

    def __init__(
        self,
        stream: Streamed,
        encode: Framing,
        *,
        keepalive: float = 15.0,
        send_timeout: float | None = None,
    ) -> None:
        self.stream = stream
        self.encode = encode
        self.raw_headers = [
            (b"content-type", encode.media_type.encode("latin-1")),
            (b"x-request-id", stream.id.encode("latin-1")),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in encode.headers),
        ]
        if stream.place is not None:
            # Where it stands in the fair queue as the response starts, before the body.
            self.raw_headers.extend(
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in queue_headers(stream.place).items()
            )
        self.ping = encode.ping
        self.keepalive = keepalive
        self.send_timeout = send_timeout
        self.tail = encode.tail
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
