"""A bound on a request's line and headers (--max-headers): 431 past it, and a flood of
headers that never end holds no memory.

The protocol tests run uvicorn in a thread with each of the two protocol classes and the
tiny app of tests/test_ollama_host_connections.py; the flood runs against the gateway as a
real process and joins the fault catalogue.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.header_flood import flood, rss
from ollama_host.connections import ConnectionLimits
from ollama_host.settings import parse_settings
from tests.gateway_proc import start_gateway
from tests.test_ollama_host_connections import (
    DEADLINE,
    PROTOCOLS,
    connect,
    error_of,
    read_response,
    read_to_end,
    serve_tiny,
)

LIMIT = 4096


@pytest.fixture(scope="module", params=PROTOCOLS)
def bounded(request: pytest.FixtureRequest) -> Iterator[int]:
    limits = ConnectionLimits(
        header_timeout=30, body_timeout=30, idle_timeout=30, max_connections=100, max_headers=LIMIT
    )
    with serve_tiny(request.param, limits) as port:
        yield port


@pytest.fixture(scope="module")
def bounded_httptools() -> Iterator[int]:
    # The gateway's parser. (Behind an answer still going out, h11 keeps a pipelined request
    # unparsed and bounds it itself, answering 400; see BoundedH11._in_head.)
    limits = ConnectionLimits(
        header_timeout=30, body_timeout=30, idle_timeout=30, max_connections=100, max_headers=LIMIT
    )
    with serve_tiny("httptools", limits) as port:
        yield port


def head_of(size: int, path: bytes = b"/") -> bytes:
    """A GET whose line and headers come to exactly `size` bytes, the blank line included."""
    start = b"GET %s HTTP/1.1\r\nHost: x\r\n" % path
    filler = size - len(start) - len(b"X-Fill: \r\n\r\n")
    assert filler >= 0
    return start + b"X-Fill: " + b"a" * filler + b"\r\n\r\n"


def test_max_headers_comes_from_the_settings() -> None:
    settings = parse_settings(["--max-headers", "8192"], env={})

    assert ConnectionLimits.of(settings).max_headers == 8192
    assert ConnectionLimits.of(parse_settings([], env={})).max_headers == 32 * 1024


@pytest.mark.slow  # uvicorn in a thread on a real socket
def test_a_head_of_exactly_the_bound_is_answered(bounded: int) -> None:
    with connect(bounded) as sock:
        sock.sendall(head_of(LIMIT))
        response = read_response(sock)

    assert response.startswith(b"HTTP/1.1 200 ")


@pytest.mark.slow  # uvicorn in a thread on a real socket
@pytest.mark.parametrize("pieces", [1, 3], ids=["in-one-write", "in-three"])
def test_one_byte_past_the_bound_is_a_431_and_the_connection_closes(
    bounded: int, pieces: int
) -> None:
    request = head_of(LIMIT + 1)
    with connect(bounded) as sock:
        step = len(request) // pieces + 1
        for at in range(0, len(request), step):
            sock.sendall(request[at : at + step])
        response, closed = read_to_end(sock)

    assert closed
    error = error_of(response, 431)
    assert error["code"] == "headers_too_large"
    assert f"{LIMIT} bytes (--max-headers)" in error["message"]


@pytest.mark.slow  # uvicorn in a thread on a real socket
def test_a_long_request_line_counts_too(bounded: int) -> None:
    with connect(bounded) as sock:
        sock.sendall(b"GET /" + b"a" * LIMIT + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        response, closed = read_to_end(sock)

    assert closed
    assert error_of(response, 431)["code"] == "headers_too_large"


@pytest.mark.slow  # uvicorn in a thread on a real socket
def test_a_body_arriving_with_its_head_is_not_counted_as_head(bounded: int) -> None:
    # Head and body in one write, together well past the bound, the head under it; then a
    # second request on the same connection, in the same write.
    body = b"b" * (4 * LIMIT)
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with connect(bounded) as sock:
        sock.sendall(post + head_of(LIMIT - 100))
        received = b""
        while received.count(b"ok!") < 2:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk

    assert received.count(b"HTTP/1.1 200 ") == 2


@pytest.mark.slow  # uvicorn in a thread on a real socket
def test_headers_flooding_in_get_a_431_while_the_flood_goes_on(bounded: int) -> None:
    answer = b""
    with connect(bounded) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Flood: " + b"a" * 100 + b"\r\n"
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(10_000):  # a megabyte, never the blank line
                sock.sendall(line)
                if select.select([sock], [], [], 0)[0]:
                    answer += sock.recv(65536)
        rest, _closed = read_to_end(sock)

    assert error_of(answer + rest, 431)["code"] == "headers_too_large"


@pytest.mark.slow  # uvicorn in a thread on a real socket, an answer of 2 s
def test_a_head_too_large_behind_a_stream_cuts_nothing(bounded_httptools: int) -> None:
    with connect(bounded_httptools) as sock:
        # A pipelined second request whose head passes the bound, sent while the first
        # streams: the stream ends whole, then the 431.
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"part0;" not in received:
            received += sock.recv(65536)
        sock.sendall(head_of(LIMIT + 10))
        rest, closed = read_to_end(sock)
        received += rest

    assert closed
    first, _, rest = received.partition(b"0\r\n\r\n")  # the end of the chunked stream
    assert all(b"part%d;" % i in first for i in range(10)), received
    assert error_of(rest, 431)["code"] == "headers_too_large"


# -- the gateway under a flood of headers --------------------------------------------------


@pytest.mark.server
@pytest.mark.faults
def test_a_flood_of_headers_is_refused_and_memory_comes_back(tmp_path: Path) -> None:
    # 20 connections sending 20 MB of headers each once took the gateway from 45 MB to
    # 547 MB, for good: every header line was kept until the header timeout.
    with start_gateway(tmp_path / "data", "--ollama", "http://127.0.0.1:9") as gateway:
        with gateway.client() as http:
            for _ in range(200):  # warm: what every request needs is allocated by now
                assert http.get("/health").status_code in (200, 503)
        before = rss(gateway.proc.pid)
        results = flood(gateway.port, 20, 20 * 2**20)
        after = rss(gateway.proc.pid)
        with gateway.client(timeout=DEADLINE) as http:
            assert http.get("/health").status_code in (200, 503)
        logs = gateway.logs()

    statuses = [re.match(rb"HTTP/1.1 (\d+)", r.answer) for r in results]
    assert [m and int(m[1]) for m in statuses] == [431] * 20
    assert all(r.closed for r in results)
    # Not a measurement: a flood the gateway kept would be hundreds of megabytes.
    assert after - before < 32 * 2**20, (before, after)
    assert "passed --max-headers" in logs
    print(f"header flood: RSS {before / 2**20:.0f} MB before, {after / 2**20:.0f} MB after")


def test_the_flood_client_counts_what_it_sent_and_reads_the_answer() -> None:
    # The bench's flood against a listener that answers once it has 200,000 bytes, and
    # then closes: the count is what went out, the answer is read, the close ends it.
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                got = 0
                while got < 200_000:
                    got += len(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 431 x\r\n\r\n")
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass

        thread = threading.Thread(target=answer)
        thread.start()
        results = flood(listener.getsockname()[1], 1, 200_000)
        thread.join()

    assert results[0].sent >= 200_000
    assert results[0].answer.startswith(b"HTTP/1.1 431")
    assert results[0].closed
