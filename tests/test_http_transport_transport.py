"""The keep-alive transport against a raw socket server that misbehaves on purpose.

Each test scripts the server side byte by byte (asyncio.start_server in the test's own loop),
so keep-alive, closes, stalls and framing are exact rather than whatever a real server does.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calls.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from calls.types import CallRequest, Message
from http_transport import KeepAliveTransport
from http_transport.transport import FirstByteTimeout, _Dechunker
from ollama_client import OllamaUpstream

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

CHAT_REPLY = b'{"message":{"role":"assistant","content":"hi"},"done":true,"eval_count":1}'


class Server:
    """A one-port TCP server; `handler` runs once per accepted connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.client_closed = asyncio.Event()
        self.got_request = asyncio.Event()
        self.url = ""

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head and body, or None once the client has closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        self.got_request.set()
        return head + body

    async def wait_client_close(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(1024):
            pass
        self.client_closed.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    async with listener:
        yield server


def client(**timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=KeepAliveTransport(), timeout=httpx.Timeout(5.0, **timeouts))


def ollama_at(url: str, **timeouts: float) -> OllamaUpstream:
    return OllamaUpstream(KeepAliveTransport(), url, httpx.Timeout(5.0, **timeouts))


def hi() -> CallRequest:
    return CallRequest(model="llama3", messages=[Message("user", "hi")])


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 10))


def fixed(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def answer_forever(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
    """Keep-alive: answer every request on the connection until the client closes it."""
    while await server.read_request(reader) is not None:
        writer.write(fixed(b"hello %d" % len(server.requests)))


def test_keep_alive_reuses_one_connection() -> None:
    async def scenario() -> tuple[list[bytes], int]:
        async with serving(answer_forever) as server, client() as http:
            bodies = [(await http.get(server.url + "/x")).content for _ in range(3)]
            return bodies, server.connections

    bodies, connections = run(scenario)
    assert bodies == [b"hello 1", b"hello 2", b"hello 3"]
    assert connections == 1


def test_bodies_larger_than_the_read_buffer_arrive_whole() -> None:
    # Past 2 MiB unread the connection stops reading until someone waits for more; a body
    # of 5 MiB, whole (Content-Length) or chunked, must still come through, twice in a row.
    big = bytes(range(256)) * (5 * 4096)

    async def large(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        while await server.read_request(reader) is not None:
            if len(server.requests) == 1:
                writer.write(fixed(big))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for at in range(0, len(big), 1 << 20):
                    part = big[at : at + (1 << 20)]
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def scenario() -> list[bool]:
        async with serving(large) as server, client() as http:
            return [(await http.get(server.url)).content == big for _ in range(2)]

    assert run(scenario) == [True, True]


def test_request_line_headers_and_body_reach_the_server() -> None:
    async def scenario() -> bytes:
        async with serving(answer_forever) as server, client() as http:
            await http.post(server.url + "/api/chat?a=1", content=b'{"x":1}')
            return server.requests[0]

    request = run(scenario)
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/chat?a=1 HTTP/1.1"
    assert b"content-length: 7" in [line.lower() for line in lines]
    assert body == b'{"x":1}'


def test_chunked_body_with_trailer_is_read_whole_and_the_connection_reused() -> None:
    async def chunked(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        while await server.read_request(reader) is not None:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
            )

    async def scenario() -> tuple[list[bytes], int]:
        async with serving(chunked) as server, client() as http:
            bodies = [(await http.get(server.url)).content for _ in range(2)]
            return bodies, server.connections

    bodies, connections = run(scenario)
    assert bodies == [b"hello world\n", b"hello world\n"]
    assert connections == 1


def test_chunks_split_across_reads_are_reassembled() -> None:
    async def trickle(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"9", b"\r\nline one\n\r", b"\n", b"9\r\nline two\n", b"\r\n0\r", b"\n\r\n"):
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(part)
        await writer.drain()

    async def scenario() -> list[bytes]:
        async with (
            serving(trickle) as server,
            client() as http,
            http.stream("GET", server.url) as response,
        ):
            return [chunk async for chunk in response.aiter_raw()]

    assert b"".join(run(scenario)) == b"line one\nline two\n"


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        # A body that runs to the close (HTTP/1.0, no length): read whole, never reused.
        (b"HTTP/1.0 200 OK\r\n\r\nall of it", b"all of it"),
        # Connection: close: a new connection next time.
        (fixed(b"once", b"Connection: close\r\n"), b"once"),
    ],
    ids=["body-to-the-close", "connection-close"],
)
def test_a_connection_the_server_will_close_is_not_reused(answer: bytes, body: bytes) -> None:
    async def closing(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        writer.write(answer)
        await writer.drain()

    async def scenario() -> tuple[list[bytes], int]:
        async with serving(closing) as server, client() as http:
            bodies = [(await http.get(server.url)).content for _ in range(2)]
            return bodies, server.connections

    bodies, connections = run(scenario)
    assert bodies == [body, body]
    assert connections == 2


def test_an_idle_connection_the_server_closed_is_replaced_not_failed() -> None:
    async def one_then_close(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        # No Connection: close header: the server just drops the idle connection later.
        await server.read_request(reader)
        writer.write(fixed(b"ok"))
        await writer.drain()

    async def scenario() -> tuple[list[int], int]:
        async with serving(one_then_close) as server, client() as http:
            statuses = []
            for _ in range(3):
                statuses.append((await http.get(server.url)).status_code)
                await asyncio.sleep(0.05)  # let the server's close arrive
            return statuses, server.connections

    statuses, connections = run(scenario)
    assert statuses == [200, 200, 200]
    assert connections == 3


def test_a_reused_connection_dropped_before_answering_is_retried_on_a_new_one() -> None:
    async def drops_second(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        # The race keep-alive clients lose: the server closes just as a request is sent.
        await server.read_request(reader)
        writer.write(fixed(b"ok"))
        await server.read_request(reader)

    async def scenario() -> tuple[list[bytes], int, int]:
        async with serving(drops_second) as server, client() as http:
            bodies = [(await http.get(server.url)).content for _ in range(2)]
            return bodies, server.connections, len(server.requests)

    bodies, connections, requests = run(scenario)
    assert bodies == [b"ok", b"ok"]
    assert connections == 2
    assert requests == 3


def test_a_post_on_a_reused_connection_dropped_before_answering_is_never_sent_again() -> None:
    # The server may have acted on the request before it closed (an Ollama that crashed
    # mid-generation): Go's client does not send a POST again, and neither does this one.
    async def drops_second(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        writer.write(fixed(b"ok"))
        await server.read_request(reader)

    async def scenario() -> tuple[int, str, int, int]:
        async with serving(drops_second) as server, client() as http:
            first = (await http.post(server.url, content=b"{}")).status_code
            try:
                await http.post(server.url, content=b"{}")
                failure = ""
            except httpx.RemoteProtocolError as exc:
                failure = str(exc)
            return first, failure, server.connections, len(server.requests)

    first, failure, connections, requests = run(scenario)
    assert first == 200
    assert "not sent again" in failure
    assert (connections, requests) == (1, 2)


def test_a_post_on_a_connection_closed_before_sending_goes_out_on_a_new_one() -> None:
    # Nothing was written on the dead connection, so sending on a new one sends it once.
    async def scenario() -> tuple[list[int], int, int]:
        async with serving(answer_forever) as server, client() as http:
            statuses = [(await http.post(server.url, content=b"{}")).status_code]
            transport = http._transport
            assert isinstance(transport, KeepAliveTransport)
            for idle in transport._idle.values():
                for conn in idle:
                    # Closed on our side, as if the loop had seen the server go: usable()
                    # cannot tell, the write fails before any byte leaves.
                    conn._error = ConnectionResetError("gone")
            statuses.append((await http.post(server.url, content=b"{}")).status_code)
            return statuses, server.connections, len(server.requests)

    statuses, connections, requests = run(scenario)
    assert statuses == [200, 200]
    assert (connections, requests) == (2, 2)


def test_a_server_that_closes_without_answering_is_a_protocol_error() -> None:
    async def rude(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)

    async def scenario() -> None:
        async with serving(rude) as server, client() as http:
            await http.get(server.url)

    with pytest.raises(httpx.RemoteProtocolError):
        run(scenario)


def test_a_body_cut_short_is_a_protocol_error() -> None:
    async def short(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    async def scenario() -> None:
        async with serving(short) as server, client() as http:
            await http.get(server.url)

    with pytest.raises(httpx.RemoteProtocolError):
        run(scenario)


def test_nothing_listening_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with serving(answer_forever) as server:
            url = server.url
        async with client() as http:
            await http.get(url)

    with pytest.raises(httpx.ConnectError):
        run(scenario)


def test_a_connect_that_hangs_is_a_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", never)

    async def scenario() -> None:
        async with client(connect=0.05) as http:
            await http.get("http://127.0.0.1:9/")

    with pytest.raises(httpx.ConnectTimeout):
        run(scenario)


def test_no_response_head_in_time_is_a_read_timeout() -> None:
    async def silent(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        await server.wait_client_close(reader)

    async def scenario() -> None:
        async with serving(silent) as server, client(read=0.05) as http:
            await http.get(server.url)

    with pytest.raises(httpx.ReadTimeout):
        run(scenario)


def test_a_stream_that_stalls_mid_body_is_a_read_timeout() -> None:
    async def stall(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await server.wait_client_close(reader)

    async def scenario() -> tuple[bytes, type[BaseException] | None]:
        async with (
            serving(stall) as server,
            client(read=0.05) as http,
            http.stream("GET", server.url) as response,
        ):
            chunks = response.aiter_raw()
            first = await anext(chunks)
            try:
                await anext(chunks)
            except httpx.TransportError as exc:
                return first, type(exc)
            return first, None

    assert run(scenario) == (b"abc", httpx.ReadTimeout)


def test_a_slow_steady_stream_longer_than_the_read_timeout_does_not_time_out() -> None:
    # The read timeout bounds each wait for the next byte, not the whole body: 40 waits of
    # 0.01 s take at least 0.4 s, more than the 0.3 s timeout.
    async def steady(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(40):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def scenario() -> bytes:
        async with serving(steady) as server, client(read=0.3) as http:
            return (await http.get(server.url)).content

    assert run(scenario) == b"x" * 40


def test_closing_a_stream_early_closes_its_connection() -> None:
    async def endless(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await server.wait_client_close(reader)

    async def scenario() -> tuple[bytes, bool, int]:
        async with serving(endless) as server, client() as http:
            async with http.stream("GET", server.url) as response:
                first = await anext(response.aiter_raw())
            # Ollama learns that nobody reads the answer from this close.
            await asyncio.wait_for(server.client_closed.wait(), 5)
            closed = server.client_closed.is_set()
            # The abandoned connection went nowhere near the idle pool.
            server.handler = answer_forever
            await http.get(server.url)
            return first, closed, server.connections

    first, closed, connections = run(scenario)
    assert first == b"abc"
    assert closed
    assert connections == 2


def test_cancelling_a_waiting_request_closes_its_connection() -> None:
    async def silent(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        await server.wait_client_close(reader)

    async def scenario() -> bool:
        async with serving(silent) as server, client() as http:
            task = asyncio.ensure_future(http.get(server.url))
            await server.got_request.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(server.client_closed.wait(), 5)
            return server.client_closed.is_set()

    assert run(scenario)


def test_ollama_client_maps_transport_failures_to_its_own_errors() -> None:
    async def stall(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        await server.wait_client_close(reader)

    async def scenario() -> tuple[UpstreamTimeout | None, UpstreamUnavailable | None]:
        timeout: UpstreamTimeout | None = None
        unavailable: UpstreamUnavailable | None = None
        async with serving(stall) as server, ollama_at(server.url, read=0.05) as ollama:
            url = server.url
            try:
                await ollama.answer(hi())
            except UpstreamTimeout as exc:
                timeout = exc
        async with ollama_at(url) as ollama:
            try:
                await ollama.answer(hi())
            except UpstreamUnavailable as exc:
                unavailable = exc
        return timeout, unavailable

    timeout, unavailable = run(scenario)
    assert timeout is not None
    assert unavailable is not None
    assert "cannot reach Ollama" in unavailable.message


def test_ollama_chat_round_trip_over_the_transport() -> None:
    async def ollama(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        while await server.read_request(reader) is not None:
            writer.write(fixed(CHAT_REPLY, b"Content-Type: application/json\r\n"))

    async def scenario() -> tuple[str, int | None, int]:
        async with serving(ollama) as server, ollama_at(server.url) as ollama_client:
            answers = [await ollama_client.answer(hi()) for _ in range(2)]
            return answers[1].content, answers[1].metrics.output_tokens, server.connections

    assert run(scenario) == ("hi", 1, 1)


def test_a_body_its_encoding_does_not_describe_is_a_bad_response() -> None:
    async def lying(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        while await server.read_request(reader) is not None:
            writer.write(fixed(b"this is not gzip", b"Content-Encoding: gzip\r\n"))

    async def scenario() -> UpstreamBadResponse | None:
        async with serving(lying) as server, ollama_at(server.url) as ollama:
            try:
                await ollama.answer(hi())
            except UpstreamBadResponse as exc:
                return exc
        return None

    bad = run(scenario)
    assert bad is not None
    assert "could not be decoded" in bad.message


def test_the_dechunker_gives_the_same_body_however_the_reads_fall() -> None:
    # Whole chunks back to back take a fast path; every other cut goes the careful way.
    wire = b"3\r\nabc\r\n1;x=1\r\nd\r\n4\r\nefgh\r\n2\r\nij\r\n0\r\nT: 1\r\n\r\n"
    request = httpx.Request("GET", "http://x")
    for first in range(len(wire) + 1):
        for second in range(first, len(wire) + 1):
            chunks = _Dechunker(request)
            parts = [wire[:first], wire[first:second], wire[second:]]
            body = b"".join(chunks.feed(part) for part in parts if part)
            assert (body, chunks.done) == (b"abcdefghij", True), (first, second)


@given(
    st.lists(st.binary(min_size=1, max_size=50), max_size=8),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=25),
    st.sampled_from([b"", b"X-Trailer: 1\r\n"]),
)
def test_chunked_bodies_decode_the_same_however_they_are_split(
    chunks: list[bytes], cuts: list[int], trailers: bytes
) -> None:
    """The decoder takes a chunk's data out as it arrives, so it must not care where a read
    ends: inside a size line, inside the data, inside a CRLF, inside the trailers."""
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailers + b"\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    reads = [wire[a:b] for a, b in itertools.pairwise(points) if b > a]
    decoder = _Dechunker(httpx.Request("GET", "http://x/"))
    body = b""
    for n, data in enumerate(reads):
        assert not decoder.done, n
        body += decoder.feed(data)

    assert decoder.done
    assert body == b"".join(chunks)


def test_a_huge_chunk_comes_out_as_it_arrives() -> None:
    decoder = _Dechunker(httpx.Request("GET", "http://x/"))
    size = 10 << 20

    first = decoder.feed(b"%x\r\n" % size + b"a" * 1000)
    second = decoder.feed(b"b" * 1000)

    assert (first, second) == (b"a" * 1000, b"b" * 1000)
    assert not decoder.done


@given(
    st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=10),
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30),
)
def test_bounded_reads_hand_on_the_bytes_in_order_however_they_arrived(
    arrivals: list[bytes], sizes: list[int]
) -> None:
    """A body is handed on at most BODY_READ bytes at a time, whatever size the loop
    delivered it in: a read takes from the first arrival without joining the rest."""
    from http_transport.transport import _Connection

    async def run() -> list[bytes]:
        conn = _Connection()
        for data in arrivals:
            conn.data_received(data)
        conn.eof_received()
        out: list[bytes] = []
        for n in itertools.cycle(sizes):
            data = await conn.read(n)
            if not data:
                return out
            assert len(data) <= n
            out.append(data)
        raise AssertionError("unreachable")

    out = asyncio.run(run())

    assert b"".join(out) == b"".join(arrivals)


# -- the first-byte bound -------------------------------------------------------------------


def first_byte_request(url: str, first_byte: float, read: float = 5.0) -> httpx.Request:
    """A GET whose timeouts hold a first-byte bound, as the upstream kinds put it there."""
    timeouts = {"connect": 5.0, "read": read, "write": 5.0, "pool": 5.0, "first_byte": first_byte}
    return httpx.Request("GET", url, extensions={"timeout": timeouts})


async def read_all(transport: KeepAliveTransport, request: httpx.Request) -> bytes:
    response = await transport.handle_async_request(request)
    try:
        return b"".join([part async for part in response.stream])  # type: ignore[union-attr]
    finally:
        await response.aclose()


@pytest.mark.parametrize("then", ["nothing", "head"])
def test_no_first_byte_within_its_bound_is_a_first_byte_timeout(then: str) -> None:
    # A hung server: it takes the request and sends nothing, or only its head (vLLM sends
    # its head at once and the first chunk after the prompt is read). The first-byte bound
    # is far under the read timeout: only it can end this wait.
    async def hung(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        if then == "head":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await server.wait_client_close(reader)

    async def scenario() -> BaseException | None:
        transport = KeepAliveTransport()
        async with serving(hung) as server:
            try:
                await read_all(transport, first_byte_request(server.url, 0.05, read=60.0))
            except httpx.TimeoutException as exc:
                return exc
            finally:
                await transport.aclose()
        return None

    failure = run(scenario)
    assert isinstance(failure, FirstByteTimeout), failure
    assert isinstance(failure, httpx.ReadTimeout)  # callers that know no better see a timeout


def test_the_first_byte_bound_is_for_the_first_byte_only() -> None:
    # The first chunk comes at once; later ones each take longer than the first-byte bound,
    # within the read timeout.
    async def slow_after_the_first(
        server: Server, reader: asyncio.StreamReader, writer: Any
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
        for _ in range(3):
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"1\r\ny\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def scenario() -> bytes:
        transport = KeepAliveTransport()
        async with serving(slow_after_the_first) as server:
            try:
                return await read_all(transport, first_byte_request(server.url, 0.05, read=5.0))
            finally:
                await transport.aclose()

    assert run(scenario) == b"xyyy"


def test_an_ollama_with_no_first_byte_says_which_bound_ended_the_wait() -> None:
    async def hung(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await server.read_request(reader)
        await server.wait_client_close(reader)

    async def scenario() -> UpstreamTimeout | None:
        async with serving(hung) as server:
            ollama = OllamaUpstream(
                KeepAliveTransport(), server.url, httpx.Timeout(60.0), first_byte=0.05
            )
            try:
                await ollama.open_stream(hi())
            except UpstreamTimeout as exc:
                return exc
            finally:
                await ollama.aclose()
        return None

    failure = run(scenario)
    assert failure is not None
    assert "no first byte within 0.05 s" in failure.message
    assert "--first-byte-timeout" in failure.message
