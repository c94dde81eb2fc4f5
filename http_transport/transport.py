"""A lean HTTP/1.1 keep-alive transport for httpx, on asyncio streams.

httpx stays the client API; this replaces only the connection handling under it.
httpcore's pool re-examines every connection for every queued request under one
lock, so its cost grows with concurrency (shared/PERFORMANCE.md, docs/performance.md).
Here an idle connection is taken from a stack and put back when its response body has
been read to the end: no lock, no scan, and one syscall (a poll) per reuse.

Reusing a connection races the server closing it: uvicorn (so vLLM), llama-server and
Node close a keep-alive connection after 5 idle seconds, and a request written just as
the server closes is lost, or worse, half-read. So a connection is reused only while it
has been idle for less than `keepalive_expiry` (under those 5 s by default), counted from
the last byte the server sent, and only if its socket has nothing to read: an idle
connection has nothing to say, so anything there (a FIN, a reset, stray bytes) means the
server is closing it. When a reused connection fails anyway, the request goes out again on
another connection only as Go's net/http allows (see `_StaleConnection`).

What it does not do, because the gateway talks only to the model servers it is configured
with and needs none of it: proxies, HTTP/2, `Expect: 100-continue`, connection caps (the
gateway's router caps calls per upstream, and Ollama queues requests itself). Failures leave
as httpx exceptions (ConnectError, ConnectTimeout, ReadTimeout, WriteTimeout, ReadError,
WriteError, RemoteProtocolError), so callers map them as they would httpx's own.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import httpx

# Longer lines or header blocks than this are not a model server talking.
_LIMIT = 1 << 20
# How much a connection holds unread before it stops reading the socket (and TCP pushes back
# on the server): what a stream keeps for a client that reads slowly, or not at all.
READ_BUFFER = 256 << 10
# The most of a body one read hands on. The loop delivers up to 256 KB at once, and with
# READ_BUFFER that is up to half a megabyte waiting; handed on whole, a flooding upstream
# became half-megabyte batches of lines, pieces and SSE bytes, each copy alive at once for
# every stream whose client does not read (50 such streams held 250 MB). Token streams read
# far less than this at a time, so they are not affected.
BODY_READ = 64 << 10
# Seconds an idle connection stays reusable, from the last byte the server sent on it: under
# the 5 s after which uvicorn, llama-server and Node close theirs, with a second to spare for
# the time the last bytes took to arrive. (The gateway's --upstream-idle; Ollama's own server
# never closes an idle connection, and a new one costs a fraction of a millisecond.)
KEEPALIVE_EXPIRY = 4.0
_NO_BODY_STATUS = frozenset({204, 304})
_POLL_IN = getattr(select, "POLLIN", 0) | getattr(select, "POLLPRI", 0)


def _timeout(request: httpx.Request, kind: str) -> float | None:
    timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeouts.get(kind)


class _Connection(asyncio.Protocol):
    """One socket to the server; serves one request at a time.

    An asyncio.Protocol rather than a StreamReader/StreamWriter pair: a streamed answer is
    a read per token, and the streams layer (feed_data, a waiter future per read, a
    bytearray copy in and out) was a tenth of what relaying a token cost. Received data
    waits here as the bytes objects the loop handed over, and a read usually returns the
    one it finds without copying.
    """

    def __init__(
        self, pause_at: int = READ_BUFFER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.pause_at = pause_at
        self.used = False  # has served a request: a failure may be a stale keep-alive
        self._clock = clock
        # When the server last sent something: its idle timer starts no later than that.
        self.received_at = 0.0
        self._poll: Any = None  # a select.poll on the socket, where the platform has one
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- protocol callbacks, from the loop ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A socket transport (uvloop's is not an asyncio.Transport subclass, but is one).
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock.fileno(), _POLL_IN)

    def data_received(self, data: bytes) -> None:
        self.received_at = self._clock()
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self.pause_at and not self._reading_paused and self.transport is not None:
            # Nobody reads fast enough: let TCP push back on the server.
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- what the transport uses ----------------------------------------------------

    def usable(self, now: float, expiry: float) -> bool:
        """Whether an idle connection may carry another request. Not if the server closed
        it (the loop has seen its FIN or a reset), left bytes unread, or may be about to
        close it (idle too long); nor if its socket has anything to read that the loop has
        not handed over yet: an idle server has nothing to say, so that is a close (or a
        reset, or garbage) on its way."""
        transport = self.transport
        if (
            self._eof
            or self._size
            or transport is None
            or transport.is_closing()
            or now - self.received_at >= expiry
        ):
            return False
        return self._poll is None or not self._poll.poll(0)

    def idle(self) -> None:
        """Back in the pool: read on, even if a slow reader had paused reading, so the loop
        sees the server close the connection while it waits."""
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Hand the request to the socket. ConnectionResetError if no byte of it left: the
        connection was closed already, or the socket refused the first send (EPIPE,
        ECONNRESET). Both loops try that send at once, inside write(), and close the
        transport if it fails; a send that took some bytes and failed later shows up as
        connection_lost instead."""
        transport = self.transport
        if self._error is not None or self._eof or transport is None or transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        transport.write(data)
        if transport.is_closing():
            raise ConnectionResetError("the socket refused the request")

    async def drain(self) -> None:
        """Wait until the socket takes what was written (the loop's write buffer drains)."""
        if not self._writing_paused:
            return
        if self._eof:
            raise ConnectionResetError("the connection is closed")
        self._drained = asyncio.get_running_loop().create_future()
        await self._drained
        if self._error is not None:
            raise ConnectionResetError("the connection is closed") from self._error

    async def _more(self) -> None:
        """Wait for data or EOF; raises the connection's error if it broke."""
        if self._eof:
            if self._error is not None:
                raise self._error
            return
        if self._reading_paused and self.transport is not None:
            # Someone waits for more, so read on, however much is buffered (a response head
            # larger than the pause threshold is read whole by readuntil).
            self._reading_paused = False
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None and not self._size:
            raise self._error

    def _take(self, n: int) -> bytes:
        if not n:
            return b""
        chunks = self._chunks
        first = chunks[0]
        if len(first) == n:
            del chunks[0]
            data = first
        elif len(first) > n:
            data, chunks[0] = first[:n], first[n:]
        else:
            # Join only the chunks that n reaches into.
            total, end = 0, 0
            while total < n:
                total += len(chunks[end])
                end += 1
            joined = b"".join(chunks[:end])
            data, rest = joined[:n], joined[n:]
            chunks[:end] = [rest] if rest else []
        self._size -= n
        return data

    async def read(self, at_most: int | None = None) -> bytes:
        """What has arrived, at most `at_most` bytes (waiting for something if nothing has);
        b"" at EOF."""
        while not self._size:
            if self._eof:
                if self._error is not None:
                    raise self._error
                return b""
            await self._more()
        return self._take(self._size if at_most is None else min(at_most, self._size))

    def _ended_early(self, expected: int | None) -> BaseException:
        """What a read that wanted more than the connection gave raises: its error if it
        broke, else IncompleteReadError with what there was (as StreamReader does)."""
        partial = self._take(self._size)
        if self._error is not None:
            return self._error
        return asyncio.IncompleteReadError(partial, expected)

    async def readexactly(self, n: int) -> bytes:
        while self._size < n:
            if self._eof:
                raise self._ended_early(n)
            await self._more()
        return self._take(n)

    async def readuntil(self, separator: bytes) -> bytes:
        start = 0
        while True:
            if self._size:
                if len(self._chunks) > 1:
                    self._chunks[:] = [b"".join(self._chunks)]
                at = self._chunks[0].find(separator, start)
                if at >= 0:
                    return self._take(at + len(separator))
                if self._size > _LIMIT:
                    raise asyncio.LimitOverrunError("separator not found in time", self._size)
                start = max(0, self._size - len(separator) + 1)
            if self._eof:
                raise self._ended_early(None)
            await self._more()

    def close(self) -> None:
        # Abort, not a graceful close: for a stream cut short this is what tells the
        # server at once that nobody reads the answer any more.
        if self.transport is not None:
            self.transport.abort()


# Methods that may be sent again when a reused connection fails after the request was
# written but before any answer: a second copy repeats nothing (Go's isReplayable).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class FirstByteTimeout(httpx.ReadTimeout):
    """No byte of the answer (its head, then its body's first) within the request's
    `first_byte` timeout: shorter than `read`, it bounds how long a hung server holds a call
    that could go elsewhere, while `read` still bounds each later wait."""


class MalformedResponse(httpx.RemoteProtocolError):
    """The server answered something that is not HTTP/1.1 as it should be: a bad status line,
    header, length or chunk. (A connection closed early is a plain RemoteProtocolError: the
    server went away, it did not talk nonsense.)"""


class _StaleConnection(Exception):
    """A reused connection failed before any response byte: the server had closed it, or
    closed it as the request went out. What happens next follows Go's net/http
    (Transport.roundTrip, shouldRetryRequest):

    - `written` False, nothing of the request was handed to the socket (Go's
      nothingWrittenError): the connection turned out closed as the write began, or the
      socket refused the first send. No byte can have reached the server's application, so
      the request goes out again on another connection, whatever its method: a POST too.
    - `written` True, some or all of it was handed to the socket, and then the connection
      closed or was reset before the first byte of an answer (Go's errServerClosedIdle and
      transportReadFromServerError), or the rest of the request could not be sent (where Go
      gives up even on a GET): the server may have read it and acted on it (an Ollama that
      died mid-generation), so only GET, HEAD, OPTIONS and TRACE go out again; a POST fails.

    Never for a fresh connection (a server that closes one at once will do it again), and
    never once a byte of the answer has arrived.
    """

    def __init__(self, written: bool) -> None:
        super().__init__()
        self.written = written


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive, for `httpx.AsyncClient(transport=...)`.

    Timeouts come from the request (the client's `httpx.Timeout`): `connect` for opening a
    connection, `write` for sending the request, `read` for each wait on the server; and,
    beside httpx's own, `first_byte` for the wait for the head and then for the body's first
    bytes (FirstByteTimeout), where it takes the place of `read`.
    """

    def __init__(
        self,
        *,
        max_idle: int = 100,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        read_buffer: int = READ_BUFFER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}
        self._read_buffer = read_buffer
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._clock = clock
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode()!r}")
        port = url.port or (443 if scheme == b"https" else 80)
        key = (scheme, url.raw_host, port)
        head = self._head(request)
        stream = request.stream
        # A body given whole (httpx.ByteStream, as the upstreams build them) is taken as it is:
        # Request.aread() runs an async generator for it, a few microseconds a request.
        if isinstance(stream, httpx.ByteStream):
            body = b"".join(stream)
        else:
            body = await request.aread()
        while True:
            conn = self._take(key)
            fresh = conn is None
            if conn is None:
                conn = await self._connect(request, key)
            try:
                return await self._exchange(request, key, conn, head + body)
            except _StaleConnection as stale:
                conn.close()
                if fresh:
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without answering", request=request
                    ) from None
                if stale.written and request.method not in _IDEMPOTENT:
                    # As Go's client does: the server may have acted on it (an Ollama that
                    # died mid-generation), and a POST is never sent twice.
                    raise httpx.RemoteProtocolError(
                        "the server closed a reused connection without answering; the "
                        "request was not sent again, since the server may have acted on it",
                        request=request,
                    ) from None
                # Nothing the server could act on: send it on the next connection.
            except BaseException:
                conn.close()
                raise

    @staticmethod
    def _head(request: httpx.Request) -> bytes:
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)]
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw)
        lines.append(b"\r\n")
        return b"".join(lines)

    def _take(self, key: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = self._clock()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be stale
            if conn.usable(now, self._expiry):
                return conn
            conn.close()
        return None

    def _release(self, key: tuple[bytes, bytes, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        # The oldest wait at the bottom of the stack, reached only when many calls run at
        # once: drop those past the expiry now, rather than keep their sockets (and the
        # server's) open until then.
        now = self._clock()
        while idle and now - idle[0].received_at >= self._expiry:
            idle.pop(0).close()
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle()
        idle.append(conn)

    async def _connect(self, request: httpx.Request, key: tuple[bytes, bytes, int]) -> _Connection:
        scheme, host, port = key
        context = None
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            conn = _Connection(self._read_buffer, self._clock)
            async with asyncio.timeout(_timeout(request, "connect")):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn, host.decode("ascii"), port, ssl=context
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"no connection to {request.url.host}:{port} within the connect timeout",
                request=request,
            ) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return conn

    async def _exchange(
        self,
        request: httpx.Request,
        key: tuple[bytes, bytes, int],
        conn: _Connection,
        message: bytes,
    ) -> httpx.Response:
        try:
            # Raises only if no byte of the request left: see _Connection.write.
            conn.write(message)
        except OSError as exc:
            if conn.used:
                raise _StaleConnection(written=False) from exc
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc
        try:
            if conn._writing_paused:
                async with asyncio.timeout(_timeout(request, "write")):
                    await conn.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("sending the request timed out", request=request) from exc
        except OSError as exc:
            if conn.used:
                raise _StaleConnection(written=True) from exc
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc

        read_timeout = _timeout(request, "read")
        first_byte = _timeout(request, "first_byte")
        try:
            raw = await _within(
                read_timeout if first_byte is None else first_byte,
                conn.readuntil(b"\r\n\r\n"),
            )
        except TimeoutError as exc:
            if first_byte is not None:
                raise FirstByteTimeout(
                    f"the server sent no response within {first_byte:g} s", request=request
                ) from exc
            raise httpx.ReadTimeout("the server sent no response in time", request=request) from exc
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and conn.used:
                raise _StaleConnection(written=True) from exc
            if exc.partial and not b"HTTP/1.".startswith(exc.partial[:7]):
                raise MalformedResponse(
                    f"not an HTTP/1.x response: {exc.partial[:80]!r}", request=request
                ) from exc
            raise httpx.RemoteProtocolError(
                "the server closed the connection before a complete response head",
                request=request,
            ) from exc
        except asyncio.LimitOverrunError as exc:
            raise MalformedResponse("the response head is too large", request=request) from exc
        except OSError as exc:
            if conn.used:
                raise _StaleConnection(written=True) from exc
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        conn.used = True

        status, reason, headers, length, chunked, keep_alive = _parse_head(raw, request)
        if request.method == "HEAD" or status in _NO_BODY_STATUS:
            length, chunked = 0, False
        body = _Body(
            self, key, conn, request, read_timeout, first_byte, length, chunked, keep_alive
        )
        return httpx.Response(
            status,
            headers=headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


async def _within(seconds: float | None, reading: Awaitable[bytes]) -> bytes:
    """`reading`, or TimeoutError after `seconds`. A plain timer that cancels the task: what
    asyncio.timeout() does, without its context object (a few microseconds an ask)."""
    if seconds is None:
        return await reading
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await reading
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()


def _parse_head(
    raw: bytes, request: httpx.Request
) -> tuple[int, bytes, list[tuple[bytes, bytes]], int | None, bool, bool]:
    """Status, reason, headers, content length, chunked?, keep-alive? of a response head."""
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise MalformedResponse(f"not an HTTP/1.x status line: {lines[0][:80]!r}", request=request)
    status = int(code)
    if status < 200:
        raise MalformedResponse(f"unexpected informational response {status}", request=request)
    keep_alive = version == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise MalformedResponse(f"malformed header line {line[:80]!r}", request=request)
        value = value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit():
                raise MalformedResponse(f"bad Content-Length {value[:40]!r}", request=request)
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif lower == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    if chunked:
        length = None
    elif length is None:
        keep_alive = False  # the body runs to the end of the connection
    return status, reason, headers, length, chunked, keep_alive


class _Body(httpx.AsyncByteStream):
    """A response body read off the connection as it arrives.

    Read to the end, it hands the connection back for reuse; closed before the end (an
    abandoned stream), it closes the connection, so the server stops sending.
    """

    def __init__(
        self,
        transport: KeepAliveTransport,
        key: tuple[bytes, bytes, int],
        conn: _Connection,
        request: httpx.Request,
        read_timeout: float | None,
        first_byte: float | None,
        length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self._transport = transport
        self._key = key
        self._conn: _Connection | None = conn
        self._request = request
        # Each wait's bound: `first_byte` until the body's first bytes came, then `read`.
        self._timeout = read_timeout if first_byte is None else first_byte
        self._read_timeout = read_timeout
        self._first = first_byte is not None
        self._length = length
        self._chunked = chunked
        self._keep_alive = keep_alive
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._read_started = 0.0
        self._timed_out = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        try:
            if self._chunked:
                # One read per arrival, everything in it decoded at once: a streamed answer
                # is a chunk per token, and each await or generator hop per token counts.
                chunks = _Dechunker(self._request)
                while True:
                    more = await self._read(conn.read(BODY_READ))
                    if not more:
                        raise httpx.RemoteProtocolError(
                            "the server closed the connection mid-body", request=self._request
                        )
                    data = chunks.feed(more)
                    if data:
                        yield data
                    if chunks.done:
                        break
            elif self._length is not None:
                # As it arrives, not whole: a large body never sits in memory at once.
                left = self._length
                while left:
                    data = await self._read(conn.read(min(left, BODY_READ)))
                    if not data:
                        raise httpx.RemoteProtocolError(
                            "the server closed the connection mid-body", request=self._request
                        )
                    left -= len(data)
                    yield data
            else:
                while data := await self._read(conn.read(BODY_READ)):
                    yield data
        except BaseException:
            self._drop()
            raise
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._keep_alive:
            self._conn = None
            self._transport._release(self._key, conn)
        else:
            self._drop()

    async def _read(self, reading: Any) -> bytes:
        try:
            if self._timeout is None:
                data: bytes = await reading
                return data
            self._watch()
            try:
                data = await reading
            finally:
                self._reader = None
            if self._first:
                self._first = False
                self._timeout = self._read_timeout
            return data
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if self._timed_out and task is not None and task.uncancel() == 0:
                if self._first:
                    raise FirstByteTimeout(
                        f"the server sent no byte of its body within {self._timeout:g} s",
                        request=self._request,
                    ) from exc
                raise httpx.ReadTimeout(
                    "the server sent nothing within the read timeout", request=self._request
                ) from exc
            raise
        except asyncio.IncompleteReadError as exc:
            raise httpx.RemoteProtocolError(
                "the server closed the connection mid-body", request=self._request
            ) from exc
        except asyncio.LimitOverrunError as exc:
            raise MalformedResponse(
                "a chunk header line is too long", request=self._request
            ) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self._request) from exc

    # A streamed answer is one read per token. asyncio.timeout() per read (a Timeout object,
    # a timer handle scheduled and cancelled) was a seventh of the CPU a relayed token cost,
    # so reads share one timer: each read only notes when it started, and the timer, when it
    # fires, either finds the current read overdue or re-arms itself for when it would be.

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = asyncio.current_task()
        self._read_started = loop.time()
        if self._timer is None:
            assert self._timeout is not None
            self._timer = loop.call_at(self._read_started + self._timeout, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._reader is None:
            return  # between reads: the next read arms a new timer
        assert self._timeout is not None
        due = self._read_started + self._timeout
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self._timed_out = True
            self._reader.cancel()
        else:
            self._timer = loop.call_at(due, self._on_timer)

    def _drop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        self._drop()


class _Dechunker:
    """Decodes a chunked body as it arrives, in linear time: a chunk's data goes out as soon
    as it is in, whole chunk or not, so a huge chunk is never held (or copied) whole."""

    __slots__ = ("_crlf", "_head", "_left", "_request", "_tail", "done", "ending")

    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        self._left = 0  # data bytes still to come in the current chunk
        self._crlf = 0  # bytes of the CRLF after a chunk's data still to come
        self._head = b""  # a chunk-size line not complete yet
        self._tail = b""  # trailers, after the last chunk
        self.ending = False  # the last (empty) chunk has come; trailers follow
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The body data in `data`; sets `done` once the body is complete."""
        out: list[bytes] = []
        pos = 0
        if not (self._left or self._crlf or self._head or self.ending):
            # The common cases: one whole chunk (a streamed token), or whole chunks back to
            # back (a short answer that arrived at once). Anything else (a chunk split across
            # reads, the last chunk, an extension or garbage) is left to the careful path.
            n = len(data)
            while (eol := data.find(b"\r\n", pos)) > pos:
                try:
                    size = int(data[pos:eol], 16)
                except ValueError:
                    break
                start = eol + 2
                end = start + size
                if size <= 0 or end + 2 > n or data[end : end + 2] != b"\r\n":
                    break
                out.append(data[start:end])
                pos = end + 2
                if pos == n:
                    return out[0] if len(out) == 1 else b"".join(out)
        while pos < len(data) and not self.done:
            if self.ending:
                self._trailers(data[pos:])
                break
            if self._crlf:
                expected = b"\r\n"[2 - self._crlf :]
                got = data[pos : pos + self._crlf]
                if not expected.startswith(got):
                    raise MalformedResponse("malformed chunk", request=self._request)
                pos += len(got)
                self._crlf -= len(got)
                continue
            if self._left:
                piece = data[pos : pos + self._left]
                out.append(piece)
                pos += len(piece)
                self._left -= len(piece)
                if not self._left:
                    self._crlf = 2
                continue
            if self._head:
                # A size line split across reads: rare, and short, so joining is cheap.
                data, pos = self._head + data[pos:], 0
                self._head = b""
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self._head = data[pos:]
                if len(self._head) > _LIMIT:
                    raise MalformedResponse("a chunk size line is too long", request=self._request)
                break
            size = self._size(data[pos:eol])
            pos = eol + 2
            if size:
                self._left = size
            else:
                self.ending = True
        return out[0] if len(out) == 1 else b"".join(out)

    def _trailers(self, data: bytes) -> None:
        # After the last chunk: trailer lines, if any, then the empty line that ends the body.
        self._tail += data
        if self._tail.startswith(b"\r\n") or b"\r\n\r\n" in self._tail:
            self.done = True
        elif len(self._tail) > _LIMIT:
            raise MalformedResponse("the trailers are too long", request=self._request)

    def _size(self, line: bytes) -> int:
        text = line.split(b";", 1)[0].strip()
        try:
            size = int(text, 16)
            if size < 0:
                raise ValueError(text)
            return size
        except ValueError:
            raise MalformedResponse(
                f"bad chunk size {text[:40]!r}", request=self._request
            ) from None
