"""A lean Ollama stand-in for benchmarks: raw asyncio protocol, httptools parser, uvloop.

tests/ollama_standin.py is faithful but spends a Starlette route and a task group on every
request; here an answer is a few byte concatenations, so the upstream is never what limits
a benchmark. It speaks the same wire format for what the gateway uses (/api/chat streamed
and whole, /api/version, /api/tags) and understands two of the stand-in's directives in the
user message: [[tokens=N]] and [[delay=S]] (seconds between streamed lines, kept on a fixed
schedule so lines never drift).

Every streamed token's content is `"<index>:<monotonic_ns> "`: the time the line was
written, on the machine-wide monotonic clock, so a client in another process can measure
how long each token took to reach it. GET /_standin/calls lists the streamed calls that had
a delay, with the stand-in's own field names (`disconnected`, `disconnected_at`, `finished`,
`tokens_sent`); POST /_standin/reset clears it.

With --uvicorn, the same answers come from an ASGI app under uvicorn (httptools, uvloop),
which closes a keep-alive connection after 5 idle seconds, as vLLM and llama-server close
theirs: a server that races a pooling client's reuse, where the raw protocol never closes.

python bench/upstream.py --port P [--uvicorn]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import Any

import httptools
import msgspec
import uvloop

_TOKENS = re.compile(rb"\[\[tokens=(\d+)\]\]")
_DELAY = re.compile(rb"\[\[delay=([0-9.]+)\]\]")
_STREAM_FALSE = re.compile(rb'"stream"\s*:\s*false')
_encode = msgspec.json.encode

_WHOLE = _encode(
    {
        "model": "llama3",
        "created_at": "2025-01-15T10:20:30.123456789Z",
        "message": {"role": "assistant", "content": "w0 w1 w2 w3 w4 w5 w6 w7 "},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "load_duration": 1_000,
        "prompt_eval_count": 2,
        "prompt_eval_duration": 40_000,
        "eval_count": 8,
        "eval_duration": 900_000,
    }
)
_DONE = (
    b'{"model":"llama3","created_at":"2025-01-15T10:20:30.123456789Z","message":'
    b'{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"total_duration":1000000,"load_duration":1000,"prompt_eval_count":2,'
    b'"prompt_eval_duration":40000,"eval_count":%d,"eval_duration":900000}\n'
)
_LINE = (
    b'{"model":"llama3","created_at":"2025-01-15T10:20:30.123456789Z","message":'
    b'{"role":"assistant","content":"%d:%d "},"done":false}\n'
)


def _plain(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        content_type,
        len(body),
        body,
    )


class Call(msgspec.Struct):
    n: int
    started: float
    tokens_sent: int = 0
    finished: bool = False
    disconnected: bool = False
    disconnected_at: float | None = None


class State:
    def __init__(self) -> None:
        self.calls: list[Call] = []


class Upstream(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.stream: Call | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        call = self.stream
        if call is not None and not call.finished:
            call.disconnected = True
            call.disconnected_at = time.time()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        assert transport is not None
        url = self.url
        if url == b"/api/chat":
            body = b"".join(self.body)
            if _STREAM_FALSE.search(body):
                transport.write(_plain(b"200 OK", _WHOLE))
            else:
                self._start_stream(body)
        elif url == b"/api/version":
            transport.write(_plain(b"200 OK", b'{"version":"0.12.0"}'))
        elif url == b"/api/tags":
            transport.write(_plain(b"200 OK", b'{"models":[{"name":"llama3:latest"}]}'))
        elif url == b"/_standin/calls":
            transport.write(_plain(b"200 OK", _encode(self.state.calls)))
        elif url == b"/_standin/reset":
            self.state.calls = []
            transport.write(_plain(b"200 OK", b"{}"))
        else:
            transport.write(_plain(b"404 Not Found", b'{"error":"not found"}'))

    # -- streaming --------------------------------------------------------------------------

    def _start_stream(self, body: bytes) -> None:
        found = _TOKENS.search(body)
        tokens = int(found.group(1)) if found else 8
        found = _DELAY.search(body)
        delay = float(found.group(1)) if found else 0.0
        call = Call(n=len(self.state.calls) + 1, started=time.time())
        if delay:
            # Only streams that take time are watched (the cancellation section reads them);
            # keeping every instant answer too grew the list by one per ask, and its garbage
            # collections stalled this upstream for longer and longer.
            self.state.calls.append(call)
        self.stream = call
        assert self.transport is not None
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        if delay == 0:
            # All of it in one write, as _WHOLE is: a burst of a dozen small writes reaches the
            # gateway as that many TCP segments, and a whole answer (asked for as a stream)
            # would measure how loopback cuts them up rather than the gateway.
            lines = [_LINE % (i, time.monotonic_ns()) for i in range(tokens)] + [_DONE % tokens]
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)
            self.transport.write(head + chunks + b"0\r\n\r\n")
            call.tokens_sent = tokens
            call.finished = True
            self.stream = None
            return
        self.transport.write(head)
        loop = asyncio.get_running_loop()
        start = loop.time()

        def tick(i: int) -> None:
            if i == tokens:
                self._end(call, tokens)
                return
            self._chunk(_LINE % (i, time.monotonic_ns()))
            call.tokens_sent += 1
            self.timer = loop.call_at(start + (i + 1) * delay, tick, i + 1)

        tick(0)

    def _chunk(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end(self, call: Call, tokens: int) -> None:
        self._chunk(_DONE % tokens)
        assert self.transport is not None
        self.transport.write(b"0\r\n\r\n")
        call.tokens_sent = tokens
        call.finished = True
        self.stream = None
        self.timer = None


async def serve(host: str, port: int) -> None:
    state = State()
    loop = asyncio.get_running_loop()
    # Several comma-separated addresses: one process that looks like several upstreams.
    hosts = host.split(",")
    server = await loop.create_server(lambda: Upstream(state), hosts, port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- the same under uvicorn ------------------------------------------------------------------

_NDJSON_HEAD = [(b"content-type", b"application/x-ndjson")]
_JSON_HEAD = [(b"content-type", b"application/json")]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/api/chat (streamed or whole), /api/version and /api/tags, as the raw protocol answers
    them; streamed lines go out one `send` each (uvicorn frames them as chunks)."""
    if scope["type"] != "http":
        return
    parts = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(parts)
    path = scope["path"]
    if path == "/api/chat" and not _STREAM_FALSE.search(body):
        found = _TOKENS.search(body)
        tokens = int(found.group(1)) if found else 8
        found = _DELAY.search(body)
        delay = float(found.group(1)) if found else 0.0
        await send({"type": "http.response.start", "status": 200, "headers": _NDJSON_HEAD})
        start = time.monotonic()
        for i in range(tokens):
            if delay:
                await asyncio.sleep(max(0.0, start + i * delay - time.monotonic()))
            line = _LINE % (i, time.monotonic_ns())
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": _DONE % tokens})
        return
    status, answer = 200, b'{"error":"not found"}'
    if path == "/api/chat":
        answer = _WHOLE
    elif path == "/api/version":
        answer = b'{"version":"0.12.0"}'
    elif path == "/api/tags":
        answer = b'{"models":[{"name":"llama3:latest"}]}'
    else:
        status = 404
    headers = [*_JSON_HEAD, (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address(es), comma-separated")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--uvicorn", action="store_true", help="serve under uvicorn (5 s keep-alive), one host"
    )
    args: Any = parser.parse_args(argv)
    if not args.uvicorn:
        uvloop.run(serve(args.host, args.port))
        return
    import uvicorn  # only this mode needs it

    uvicorn.run(
        asgi_app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
        # uvicorn's default, spelled out: what this mode is for.
        timeout_keep_alive=5,
    )


if __name__ == "__main__":
    main()
