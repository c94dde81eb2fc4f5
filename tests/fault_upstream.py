"""A misbehaving Ollama for the fault tests: a raw asyncio HTTP/1.1 server, run as its own process.

Not Starlette: it must write as fast as the socket allows, send bytes that are not HTTP, stall
before or after its headers, and die mid-answer. It speaks the part of Ollama's API the gateway
uses (shared/OLLAMA_API.md): `GET /api/version`, `GET /api/tags`, `GET|HEAD /` and
`POST /api/chat`. How a chat is answered is chosen by its MODEL NAME, which the gateway passes
through unchanged (a `:tag` is ignored). N is a byte count (`64k`, `50m` are accepted):

================  ==============================================================================
tokens-N          a normal answer of N tokens `w0 w1 ...` (stream or not), then the done line
drip-MS           stream: a token every MS milliseconds, forever
flood-N           200 NDJSON chunks with N-byte contents, back to back, as fast as the socket
                  allows, until the client closes; not streamed: a body that never ends
noline-N          200, then one N-byte line without a newline (written in pieces), then close
bigbody-N         a 200 body of exactly N bytes of valid JSON (the whole answer, done: true),
                  with Content-Length, whatever `stream` says
bigtoken-N        one valid chunk whose content is N bytes, then a proper done line
garbage           200 with a body that is not JSON (a stream: one line that is not JSON)
garbage-http      bytes that are not an HTTP response at all, then close
badchunk          200 stream headers, then a chunk size that is not hex
stall-head        accepts the request, never answers
stall-body        headers, then silence
stall-mid         stream: three tokens, then silence; not streamed: half a body, then silence
die-mid           as stall-mid, then the whole process exits (like a killed Ollama)
================  ==============================================================================

Any other model is answered 404 as Ollama does. Nothing large is ever built in memory: long
contents go out in 64 KB pieces, each waiting for the socket.

Test-only endpoints: `GET /_fault/stats` lists every chat request so far, in arrival order, as
{id, model, stream, started_at, bytes_written, closed_at, ended_at, open}: `bytes_written` is what
the socket accepted; `closed_at` when the client was seen to close the connection (None while it
has not); `ended_at` when the server stopped answering; `open` while the connection is. Times are
`time.monotonic()`, which on Linux is one clock for every process, so a test compares them with
its own. `POST /_fault/reset` forgets them.

Run as a script (`python tests/fault_upstream.py --port P`) or with :func:`start_fault_upstream`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import httpx
import msgspec

VERSION: Final = "0.12.0"
PIECE: Final = 64 * 1024
# A request head or body larger than this is refused: the server's own buffers are bounded too.
MAX_REQUEST: Final = 1 << 20
CREATED_AT: Final = "2025-01-15T10:20:30.123456789Z"
MODEL_RE: Final = re.compile(r"([a-z-]+?)(?:-(\d+)([km]?))?(?::.*)?")
MODES: Final = {
    "tokens": True,
    "drip": True,
    "flood": True,
    "noline": True,
    "bigbody": True,
    "bigtoken": True,
    "garbage": False,
    "garbage-http": False,
    "badchunk": False,
    "stall-head": False,
    "stall-body": False,
    "stall-mid": False,
    "die-mid": False,
}
_SCALE: Final = {"": 1, "k": 1024, "m": 1024 * 1024}
JSON: Final = b"application/json; charset=utf-8"  # what gin sends with c.JSON
NDJSON: Final = b"application/x-ndjson"  # what Ollama sends for streams
CHUNKED: Final = b"Transfer-Encoding: chunked"
LAST_CHUNK: Final = b"0\r\n\r\n"
_encode = msgspec.json.encode


@dataclass
class Exchange:
    """One /api/chat request and what became of it."""

    id: int
    model: str
    stream: bool
    started_at: float
    bytes_written: int = 0
    closed_at: float | None = None
    ended_at: float | None = None
    open: bool = True


class ClientGone(Exception):
    """The client closed the connection while the server was answering."""


class _Chat(msgspec.Struct):
    model: str = ""
    stream: bool = True


def parse_model(model: str) -> tuple[str, int] | None:
    """(mode, N) for a fault model name, or None if it names no mode."""
    match = MODEL_RE.fullmatch(model.lower())
    if match is None or match[1] not in MODES:
        return None
    sized = MODES[match[1]]
    if (match[2] is not None) != sized:
        return None
    return match[1], int(match[2]) * _SCALE[match[3]] if sized else 0


def _line(model: str, content: bytes, *, done: bool = False) -> bytes:
    """A chat chunk up to its `done` value, without the closing brace (a done line adds metrics)."""
    return (
        b'{"model":%s,"created_at":"%s","message":{"role":"assistant","content":%s},"done":%s'
        % (
            _encode(model),
            CREATED_AT.encode(),
            content,
            b"true" if done else b"false",
        )
    )


def _token(model: str, text: bytes) -> bytes:
    """One whole streamed line carrying `text` (plain ASCII, nothing to escape)."""
    return _line(model, b'"%s"' % text) + b"}\n"


def _content_start(model: str) -> bytes:
    """A chat chunk up to and with the opening quote of its content."""
    whole = _line(model, b'""')
    return whole[: whole.index(b'"content":"') + len(b'"content":"')]


def _done_tail(tokens: int) -> bytes:
    return (
        b',"done_reason":"stop","total_duration":%d,"load_duration":1000000,'
        b'"prompt_eval_count":3,"prompt_eval_duration":60000,"eval_count":%d,'
        b'"eval_duration":%d}' % (2_000_000 + 1000 * tokens, tokens, 1000 * max(tokens, 1))
    )


def _done(model: str, tokens: int) -> bytes:
    return _line(model, b'""', done=True) + _done_tail(tokens) + b"\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Connection:
    """One client connection: requests in turn (keep-alive), each answered by its model's mode."""

    def __init__(
        self, server: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()  # read from the client, not yet parsed
        self.exchange: Exchange | None = None  # the chat being answered, or answered last
        self.closing = False
        self._handed = 0  # bytes given to the transport for the current exchange

    # -- writing -----------------------------------------------------------------------------

    def settle(self) -> None:
        """Bring the exchange's bytes_written up to date: what the socket has taken so far."""
        if self.exchange is not None and self.exchange.ended_at is None:
            buffered = self.writer.transport.get_write_buffer_size()
            self.exchange.bytes_written = self._handed - buffered

    async def send(self, data: bytes) -> None:
        if self.writer.transport.is_closing():
            raise ClientGone
        self.writer.write(data)
        self._handed += len(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ClientGone from exc
        finally:
            self.settle()

    async def head(self, status: bytes, content_type: bytes, length: int | None = None) -> None:
        framing = b"Content-Length: %d" % length if length is not None else CHUNKED
        await self.send(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nDate: Wed, 15 Jan 2025 10:20:30 GMT\r\n"
            b"%s\r\n\r\n" % (status, content_type, framing)
        )

    async def json(self, status: bytes, body: bytes) -> None:
        await self.send(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status, JSON, len(body), body)
        )

    async def filler(self, n: int, *, chunked: bool) -> None:
        """n bytes of content, 64 KB at a time, never all in memory."""
        block = b"a" * min(n, PIECE)
        framed = _chunk(block) if chunked else block
        while n >= PIECE:
            await self.send(framed)
            n -= PIECE
        if n:
            await self.send(_chunk(block[:n]) if chunked else block[:n])

    # -- reading -----------------------------------------------------------------------------

    async def _more(self) -> bool:
        data = await self.reader.read(PIECE)
        self.buffer += data
        return bool(data)

    async def _read_request(self) -> tuple[str, str, bytes] | None:
        """The next request, or None when the client closed the connection between requests."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_REQUEST or not await self._more():
                return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length > MAX_REQUEST or "transfer-encoding" in headers:
            self.closing = True
            await self.json(b"413 Request Entity Too Large", b'{"error":"request too large"}')
            return None
        while len(self.buffer) < length:
            if not await self._more():
                return None
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        self.closing = headers.get("connection", "").lower() == "close"
        return method, path.split("?", 1)[0], body

    async def _watch(self) -> None:
        """Returns when the client closes its side: the only way a stalled answer learns it."""
        while len(self.buffer) <= MAX_REQUEST:
            # The gateway never sends a request before the answer to the last one ended; a
            # client that does keeps its bytes for later.
            if not await self._more():
                return
        await asyncio.Event().wait()

    # -- the request loop --------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            while not self.closing:
                request = await self._read_request()
                if request is None:
                    break
                await self._route(*request)
        except (ClientGone, ConnectionError, ValueError):
            pass  # ValueError: a request that is not HTTP; this server only drops it
        finally:
            if self.exchange is not None:
                # The last answer's connection is gone now, whoever closed it.
                self.exchange.open = False
                self.exchange.closed_at = self.exchange.closed_at or time.monotonic()
            self.writer.transport.abort()

    async def _route(self, method: str, path: str, body: bytes) -> None:
        if method == "POST" and path == "/api/chat":
            await self._chat(body)
        elif method == "GET" and path == "/api/version":
            await self.json(b"200 OK", b'{"version":"%s"}' % VERSION.encode())
        elif method == "GET" and path == "/api/tags":
            names = ["tokens-8:latest", "flood-1024:latest", "stall-mid:latest"]
            models = [{"name": n, "model": n, "modified_at": CREATED_AT} for n in names]
            await self.json(b"200 OK", _encode({"models": models}))
        elif method in ("GET", "HEAD") and path == "/":
            text = b"Ollama is running"
            await self.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(text), text if method == "GET" else b"")
            )
        elif method == "GET" and path == "/_fault/stats":
            self.server.settle()
            await self.json(b"200 OK", _encode([asdict(e) for e in self.server.exchanges]))
        elif method == "POST" and path == "/_fault/reset":
            self.server.exchanges = []
            await self.json(b"200 OK", b"{}")
        else:
            text = b"404 page not found"  # gin's plain-text answer for an unknown route
            await self.send(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(text), text)
            )

    async def _chat(self, body: bytes) -> None:
        try:
            chat = msgspec.json.decode(body, type=_Chat)
        except msgspec.DecodeError as exc:
            await self.json(b"400 Bad Request", _encode({"error": str(exc)}))
            return
        fault = parse_model(chat.model)
        if fault is None:
            message = f'model "{chat.model}" not found, try pulling it first'
            await self.json(b"404 Not Found", _encode({"error": message}))
            return
        self.exchange = exchange = Exchange(
            id=len(self.server.exchanges) + 1,
            model=chat.model,
            stream=chat.stream,
            started_at=time.monotonic(),
        )
        self.server.exchanges.append(exchange)
        self.server.live.add(self)
        self._handed = 0
        answer = asyncio.ensure_future(self._answer(*fault, chat))
        watch = asyncio.ensure_future(self._watch())
        try:
            await asyncio.wait([answer, watch], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            answer.cancel()
            gone = await _outcome(answer) is not None
            await _outcome(watch)
            if watch.done() and not watch.cancelled():
                gone = True  # the watcher saw the client close
            self.settle()
            exchange.ended_at = time.monotonic()
            self.server.live.discard(self)
            if gone:
                exchange.closed_at = exchange.closed_at or exchange.ended_at
                self.closing = True

    async def _answer(self, mode: str, n: int, chat: _Chat) -> None:
        model = chat.model
        if mode == "tokens":
            words = [b"w%d " % i for i in range(n)]
            if chat.stream:
                await self.head(b"200 OK", NDJSON)
                for word in words:
                    await self.send(_chunk(_token(model, word)))
                await self.send(_chunk(_done(model, n)) + LAST_CHUNK)
            else:
                whole = _encode(b"".join(words).decode())
                await self.json(b"200 OK", _line(model, whole, done=True) + _done_tail(n))
        elif mode == "drip":
            await self.head(b"200 OK", NDJSON)
            i = 0
            while True:
                await self.send(_chunk(_token(model, b"w%d " % i)))
                i += 1
                await asyncio.sleep(n / 1000)
        elif mode == "flood":
            await self._flood(model, n, stream=chat.stream)
        elif mode == "noline":
            await self.head(b"200 OK", NDJSON)
            start = _content_start(model)[:n]
            await self.send(_chunk(start))
            await self.filler(n - len(start), chunked=True)
            await self.send(LAST_CHUNK)
            self.closing = True
        elif mode == "bigtoken" and chat.stream:
            await self.head(b"200 OK", NDJSON)
            await self.send(_chunk(_content_start(model)))
            await self._content_rest(n)
            await self.send(_chunk(_done(model, 1)) + LAST_CHUNK)
        elif mode in ("bigbody", "bigtoken"):
            start, end = _content_start(model), b'"},"done":true' + _done_tail(1)
            fill = max(n - len(start) - len(end), 0) if mode == "bigbody" else n
            await self.head(b"200 OK", JSON, length=len(start) + fill + len(end))
            await self.send(start)
            await self.filler(fill, chunked=False)
            await self.send(end)
        elif mode == "garbage":
            if chat.stream:
                await self.head(b"200 OK", NDJSON)
                await self.send(_chunk(b"this is not json\n") + LAST_CHUNK)
            else:
                await self.json(b"200 OK", b"not json")
        elif mode == "garbage-http":
            await self.send(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe this is not HTTP\r\n\r\n")
            self.closing = True
        elif mode == "badchunk":
            await self.head(b"200 OK", NDJSON)
            await self.send(b"zz\r\nnot a chunk size\r\n")
            self.closing = True
        elif mode == "stall-head":
            await asyncio.Event().wait()
        elif mode == "stall-body":
            if chat.stream:
                await self.head(b"200 OK", NDJSON)
            else:
                await self.head(b"200 OK", JSON, length=1000)
            await asyncio.Event().wait()
        elif mode in ("stall-mid", "die-mid"):
            if chat.stream:
                await self.head(b"200 OK", NDJSON)
                for i in range(3):
                    await self.send(_chunk(_token(model, b"w%d " % i)))
            else:
                await self.head(b"200 OK", JSON, length=1000)
                await self.send(_content_start(model) + b"w0 w1 ")
            if mode == "die-mid":
                # Let the kernel have every byte, then go the way a killed process goes.
                self.writer.transport.set_write_buffer_limits(high=0)
                await self.writer.drain()
                os._exit(3)
            await asyncio.Event().wait()
        else:  # parse_model knows only the modes above
            raise AssertionError(mode)

    async def _content_rest(self, n: int) -> None:
        """n bytes of content, then the end of the chunk line whose start was sent."""
        await self.filler(n, chunked=True)
        await self.send(_chunk(b'"},"done":false}\n'))

    async def _flood(self, model: str, n: int, *, stream: bool) -> None:
        if not stream:
            # A body that never ends: the start of the one object, then content forever.
            await self.head(b"200 OK", JSON)
            await self.send(_chunk(_content_start(model)))
            block = _chunk(b"a" * PIECE)
            while True:
                await self.send(block)
        await self.head(b"200 OK", NDJSON)
        if n <= PIECE:
            line = _token(model, b"a" * n)
            block = _chunk(line * max(PIECE // len(line), 1))
            while True:
                await self.send(block)
        while True:
            await self.send(_chunk(_content_start(model)))
            await self._content_rest(n)


async def _outcome(task: asyncio.Future[None]) -> BaseException | None:
    """Wait for a task that was just cancelled; its exception, if it ended by one."""
    try:
        await task
    except asyncio.CancelledError:
        return None
    except (ClientGone, ConnectionError) as exc:
        return exc
    return None


class FaultServer:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.live: set[Connection] = set()

    def settle(self) -> None:
        for connection in self.live:
            connection.settle()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await Connection(self, reader, writer).serve()


async def serve(host: str, port: int) -> None:
    server = FaultServer()
    listener = await asyncio.start_server(server.handle, host, port, limit=MAX_REQUEST)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with listener:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A misbehaving Ollama for fault tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------

_SCRIPT: Final = Path(__file__).resolve()


class FaultUpstream:
    """A running fault server process (see start_fault_upstream)."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self._stderr = stderr
        self._client = httpx.Client(base_url=self.url, timeout=5.0, trust_env=False)

    def stats(self) -> list[dict[str, Any]]:
        response = self._client.get("/_fault/stats")
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    def reset(self) -> None:
        self._client.post("/_fault/reset").raise_for_status()

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Poll stats() until predicate(stats) holds; return those stats."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.stats()
            if predicate(found):
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(f"fault upstream: condition not met in {timeout}s: {found}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as an out-of-memory killer or a crash would end Ollama."""
        self._client.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        """Start again on the same port (after kill(), or after a die-mid model)."""
        self.kill()
        self._stderr.close()
        again = start_fault_upstream(port=self.port)
        self.process, self._stderr, self._client = again.process, again._stderr, again._client

    def stderr(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        self._client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()

    def __enter__(self) -> FaultUpstream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_fault_upstream(*, port: int | None = None) -> FaultUpstream:
    """Start the fault server on a free loopback port (or `port`) and wait until it answers."""
    failure = ""
    for _ in range(1 if port is not None else 3):  # a free port can be taken before we bind
        chosen = port if port is not None else _free_port()
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the FaultUpstream
        process = subprocess.Popen(
            [sys.executable, str(_SCRIPT), "--port", str(chosen)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        deadline = time.monotonic() + 10
        with httpx.Client(timeout=1.0, trust_env=False) as probe:
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    if probe.get(f"http://127.0.0.1:{chosen}/_fault/stats").status_code == 200:
                        return FaultUpstream(chosen, process, stderr)
                time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        process.wait()
        stderr.seek(0)
        failure = stderr.read().decode(errors="replace")
        stderr.close()
        if "address already in use" not in failure.lower():
            break
    raise RuntimeError(f"the fault upstream did not start; its stderr:\n{failure}")


if __name__ == "__main__":
    main()
