"""Slow and idle clients: a request must arrive in time, an idle connection closes, the
number of connections has a cap, and none of it ever cuts an answer going out.

The gateway tests run `python app.py` with short timeouts set by flags; the protocol tests
run uvicorn in a thread with each of the two protocol classes (httptools and h11) and a
tiny app, since the gateway picks only one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from ollama_host.connections import ConnectionLimits, default_max_connections, protocol_class
from ollama_host.settings import parse_settings
from tests.gateway_proc import Gateway, free_port, start_gateway
from tests.helpers import ERROR_KEYS, ask, data, read_events, unique
from tests.ollama_standin import StandIn

SHORT = 0.5  # every timeout of the gateways here
DEADLINE = 15.0  # how long a test waits for what should take SHORT: the machine is shared


# -- raw connections ------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)


def read_to_end(sock: socket.socket, seconds: float = DEADLINE) -> tuple[bytes, bool]:
    """What the peer sends until it closes; and whether it closed within `seconds`."""
    received = b""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, leaving the connection open."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, received
        body += chunk
    return head + b"\r\n\r\n" + body


def error_of(response: bytes, status: int) -> dict[str, Any]:
    """The gateway's error shape in a raw response with that status."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), response
    assert b"content-type: application/json" in head.lower()
    error: dict[str, Any] = msgspec.json.decode(body)["error"]
    assert set(error) == ERROR_KEYS
    assert error["status"] == status
    return error


HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# -- against the gateway ---------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose every connection timeout is SHORT."""
    data_dir = tmp_path_factory.mktemp("strict") / "data"
    flags = ["--header-timeout", str(SHORT), "--body-timeout", str(SHORT)]
    flags += ["--idle-timeout", str(SHORT), "--keepalive", "0.2"]
    with start_gateway(data_dir, "--ollama", standin.url, *flags) as server:
        yield server
    assert "Traceback" not in server.logs()


@pytest.mark.server
def test_headers_that_never_end_get_408_and_the_connection_closes(strict: Gateway) -> None:
    with connect(strict.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        response, closed = read_to_end(sock)

    assert closed
    error = error_of(response, 408)
    assert error["code"] == "request_timeout"
    assert "--header-timeout" in error["message"]


@pytest.mark.server
def test_headers_sent_a_byte_at_a_time_are_cut_off(strict: Gateway) -> None:
    # Each byte comes well within the timeout; the whole head never does.
    with connect(strict.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and not select.select([sock], [], [], 0.1)[0]:
            sock.sendall(b"x")
        response, closed = read_to_end(sock)

    assert closed
    assert error_of(response, 408)["code"] == "request_timeout"


@pytest.mark.server
def test_a_body_that_never_ends_gets_408_and_the_connection_closes(strict: Gateway) -> None:
    with connect(strict.port) as sock:
        sock.sendall(
            b"POST /api/v1/ai/ask_sync HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"agent": '
        )
        response, closed = read_to_end(sock)

    assert closed
    error = error_of(response, 408)
    assert error["code"] == "request_timeout"
    assert "--body-timeout" in error["message"]


@pytest.mark.server
def test_a_connection_that_never_asks_is_closed(strict: Gateway) -> None:
    with connect(strict.port) as sock:
        response, closed = read_to_end(sock)

    assert (response, closed) == (b"", True)


@pytest.mark.server
def test_a_kept_connection_serves_requests_then_closes_when_idle(strict: Gateway) -> None:
    with connect(strict.port) as sock:
        # Both at once: a pause between them could outlast the idle timeout.
        sock.sendall(HEALTH + HEALTH)
        received, closed = read_to_end(sock)

    assert closed
    assert received.startswith(b"HTTP/1.1 200")
    assert received.count(b"HTTP/1.1 200") == 2


@pytest.mark.server
def test_a_stream_longer_than_every_timeout_is_not_cut(strict: Gateway) -> None:
    # 8 tokens, 0.3 s apart: over 2 s of output, four times each timeout.
    body = ask(content="count [[tokens=8]] [[delay=0.3]]", project=unique())
    with (
        strict.client() as client,
        client.stream("POST", "/api/v1/ai/ask_async", json=body) as response,
    ):
        events, _ = read_events(response)

    told = [
        e.event for e in events if e.event != "loading"
    ]  # `loading` first if the stand-in had not loaded the model
    assert told == ["start"] + ["token"] * 8 + ["done"]
    assert data(events[-1])["output_tokens"] == 8


@pytest.mark.server
@pytest.mark.parametrize("path", ["/api/v1/ai/ask_sync", "/api/v1/ai/ask_async"])
def test_an_answer_slow_to_start_is_not_cut(strict: Gateway, path: str) -> None:
    # The model "loads" for three timeouts; the gateway sends nothing meanwhile (sync)
    # or only keep-alive comments (stream).
    body = ask(content="hello [[load=1.5]] [[tokens=2]]", project=unique())
    with strict.client() as client:
        response = client.post(path, json=body)

    assert response.status_code == 200, response.text
    assert "w1" in response.text


@pytest.fixture(scope="module")
def capped(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("capped") / "data"
    flags = ["--max-connections", "4", "--idle-timeout", "120", "--header-timeout", "120"]
    with start_gateway(data_dir, "--ollama", standin.url, *flags) as server:
        yield server


def held_connection(port: int) -> socket.socket:
    """A connection the gateway has accepted and answered, kept open (waiting)."""
    sock = connect(port)
    try:
        sock.sendall(HEALTH)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    except BaseException:
        sock.close()
        raise
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


def streaming_connection(port: int, request: bytes, first: bytes) -> socket.socket:
    """A connection whose answer has begun (`first` read) and is still going out."""
    sock = connect(port)
    try:
        sock.sendall(request)
        read_until(sock, first)
    except BaseException:
        sock.close()
        raise
    return sock


def sse_request(content: str) -> bytes:
    body = msgspec.json.encode(ask(content=content, project=unique()))
    return (
        b"POST /api/v1/ai/ask_async HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def logged(gateway: Gateway, text: str) -> int:
    """How often the log says `text`, once it says it at all: a thread writes the log."""
    end = time.monotonic() + DEADLINE
    while text not in gateway.logs() and time.monotonic() < end:
        time.sleep(0.05)
    return gateway.logs().count(text)


@pytest.mark.server
def test_connections_past_the_cap_are_refused_at_once_and_the_rest_keep_working(
    capped: Gateway,
) -> None:
    # Four streams of 4.5 s each: busy connections, which never make room.
    request = sse_request("count [[tokens=30]] [[delay=0.15]]")
    with contextlib.ExitStack() as opened:
        held = [
            opened.enter_context(streaming_connection(capped.port, request, b"event: start"))
            for _ in range(4)
        ]
        refused = []
        for _ in range(3):
            # Nothing is sent: the refusal comes before the gateway reads anything.
            with connect(capped.port) as extra:
                refused.append(read_to_end(extra))
        for sock in held:
            assert b"event: done" in read_until(sock, b"event: done")

    for response, closed in refused:
        assert closed
        # The 503 is a courtesy: a client may see the connection closed or reset first.
        if response:
            assert error_of(response, 503)["code"] == "too_many_connections"
    assert logged(capped, "refusing new connections") == 1, capped.logs()


@pytest.mark.server
def test_at_the_cap_a_connection_waiting_for_a_request_makes_room(capped: Gateway) -> None:
    # Silent connections at the cap would otherwise lock every new client out for as long
    # as the idle timeout. (The start-up probe's connection may still count: two new
    # clients make room twice, so the oldest held one goes in any case.)
    with contextlib.ExitStack() as opened:
        held = [opened.enter_context(held_connection(capped.port)) for _ in range(4)]
        answers = []
        for _ in range(2):
            with connect(capped.port) as new:
                new.sendall(HEALTH)
                answers.append(read_response(new))
        oldest = read_to_end(held[0])

    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert oldest == (b"", True)
    assert logged(capped, "closing those waiting for a request") == 1, capped.logs()


def test_the_limits_come_from_the_settings() -> None:
    settings = parse_settings(
        ["--header-timeout", "0.5", "--body-timeout", "2", "--idle-timeout", "3"],
        env={"OLLAMA_GATEWAY_MAX_CONNECTIONS": "7"},
    )

    assert ConnectionLimits.of(settings) == ConnectionLimits(
        header_timeout=0.5, body_timeout=2, idle_timeout=3, max_connections=7
    )
    assert (
        ConnectionLimits.of(parse_settings([], env={})).max_connections == default_max_connections()
    )


@pytest.mark.parametrize(
    "flags", [["--max-connections", "0"], ["--header-timeout", "0"], ["--idle-timeout", "-1"]]
)
def test_limits_must_be_positive(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(flags, env={})

    assert exited.value.code == 2


def test_the_default_cap_is_well_under_the_open_files_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)

    assert 1 <= default_max_connections() <= min(1024, soft // 2)


# -- each protocol class, under uvicorn in a thread ---------------------------------------


async def tiny_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers: /stream in 10 chunks 0.2 s apart (/long in 30),
    /late after 1.5 s of silence, anything else at once."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    if scope["path"] in ("/stream", "/long"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(10 if scope["path"] == "/stream" else 30):
            await asyncio.sleep(0.2)
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if scope["path"] == "/late":
        await asyncio.sleep(1.5)
    headers = [(b"content-length", b"3")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok!"})


@contextlib.contextmanager
def serve_tiny(http: str, limits: ConnectionLimits) -> Iterator[int]:
    """uvicorn serving tiny_app in a thread with one of the protocol classes; its port."""
    port = free_port()
    config = uvicorn.Config(
        tiny_app,
        host="127.0.0.1",
        port=port,
        http=protocol_class(limits, http=http),
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + DEADLINE
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < end, "uvicorn did not start in time"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(DEADLINE)


PROTOCOLS = ["httptools", "h11"]


@pytest.fixture(scope="module", params=PROTOCOLS)
def tiny(request: pytest.FixtureRequest) -> Iterator[int]:
    limits = ConnectionLimits(
        header_timeout=SHORT, body_timeout=SHORT, idle_timeout=SHORT, max_connections=100
    )
    with serve_tiny(request.param, limits) as port:
        yield port


@pytest.mark.slow  # uvicorn in a thread on a real socket, real timeouts
def test_protocol_header_timeout(tiny: int) -> None:
    with connect(tiny) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        response, closed = read_to_end(sock)

    assert closed
    assert error_of(response, 408)["code"] == "request_timeout"


@pytest.mark.slow  # uvicorn in a thread on a real socket, real timeouts
def test_protocol_body_timeout(tiny: int) -> None:
    with connect(tiny) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        response, closed = read_to_end(sock)

    assert closed
    assert "--body-timeout" in error_of(response, 408)["message"]


@pytest.mark.slow  # uvicorn in a thread on a real socket, real timeouts
def test_protocol_idle_before_the_first_request(tiny: int) -> None:
    with connect(tiny) as sock:
        assert read_to_end(sock) == (b"", True)


@pytest.mark.slow  # uvicorn in a thread on a real socket, real timeouts
def test_protocol_never_cuts_a_stream_or_a_late_answer(tiny: int) -> None:
    # A new connection for each: an idle one may close between two requests.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=f"http://127.0.0.1:{tiny}", timeout=DEADLINE, limits=fresh) as c:
        stream = c.post("/stream", content=b"x" * 10)
        late = c.get("/late")

    assert stream.text == "".join(f"part{i};" for i in range(10))
    assert late.text == "ok!"


@pytest.mark.slow  # uvicorn in a thread on a real socket, real timeouts
@pytest.mark.parametrize(
    "second",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab",
    ],
    ids=["head-unfinished", "body-unfinished"],
)
def test_protocol_a_request_trickling_in_behind_a_stream_cuts_nothing(
    tiny: int, second: bytes
) -> None:
    with connect(tiny) as sock:
        # A pipelined second request that never ends, sent while the first streams.
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n" + second)
        received, closed = read_to_end(sock)

    assert closed
    first, _, rest = received.partition(b"0\r\n\r\n")  # the end of the chunked stream
    assert all(b"part%d;" % i in first for i in range(10)), received
    assert rest == b"" or error_of(rest, 408)


@pytest.mark.parametrize("http", PROTOCOLS)
@pytest.mark.slow  # uvicorn in a thread on a real socket, real timeouts
def test_protocol_cap(http: str) -> None:
    limits = ConnectionLimits(
        header_timeout=120, body_timeout=SHORT, idle_timeout=120, max_connections=3
    )
    with serve_tiny(http, limits) as port, contextlib.ExitStack() as opened:
        waiting = [opened.enter_context(held_connection(port)) for _ in range(3)]
        # The cap is reached, but a connection that waits for a request makes room...
        made_room = opened.enter_context(held_connection(port))
        evicted = read_to_end(waiting[0])
        # ... and one that is being answered does not.
        busy = [*waiting[1:], made_room]
        for sock in busy:
            sock.sendall(b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
            read_until(sock, b"part0;")
        with connect(port) as extra:
            response, closed = read_to_end(extra)
        for sock in busy:
            read_until(sock, b"part29;")

    assert evicted == (b"", True)
    assert closed
    if response:
        assert error_of(response, 503)["code"] == "too_many_connections"
