"""Reusing a kept-alive connection as the server closes it: the race every pooling client
meets, made deterministic.

The server here is the test's own: HTTP/1.1 keep-alive on real sockets, in threads, whose
idle connections close only when the test fires their timer (`expire_idle`), with a FIN as
uvicorn closes them or with a reset. The test then waits until the FIN or the reset has
reached the client's socket, without letting the client's event loop run, and sends the
next request at once: exactly the moment at which a pooled connection looks alive to the
loop and is not. Each test runs on asyncio's own loop and on uvloop, which the gateway uses.
"""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import pytest

from http_transport import KeepAliveTransport
from http_transport.transport import KEEPALIVE_EXPIRY, _Connection
from ollama_host.settings import Settings

T = TypeVar("T")


def uvloop_loop() -> asyncio.AbstractEventLoop:
    uvloop = pytest.importorskip("uvloop")  # the `speed` extra, which the gateway runs on
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[T]]], T]:
    factory = LOOPS[request.param]

    def runner(scenario: Callable[[], Awaitable[T]]) -> T:
        with asyncio.Runner(loop_factory=factory) as loop:
            return loop.run(asyncio.wait_for(scenario(), 10))

    return runner


class IdleClosingServer:
    """Answers every request `200 ok` on a kept-alive connection, one thread a connection.
    An idle connection closes only when the test calls expire_idle: its keep-alive timer."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.lock = threading.Condition()
        self.accepted = 0
        self.requests_read = 0  # requests the application read whole
        self.closed_by_client = 0
        self.drop_next = False  # read the next request, then close without answering
        self._idle: dict[socket.socket, threading.Thread] = {}
        self._expired: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        accepting = threading.Thread(target=self._accept, daemon=True)
        accepting.start()
        self._threads.append(accepting)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            with self.lock:
                self.accepted += 1
                self._idle[sock] = thread  # idle until its first request's first byte
            self._threads.append(thread)
            thread.start()

    def _recv(self, sock: socket.socket) -> bytes | None:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""  # the client aborted it
        with self.lock:
            if not chunk:
                if sock not in self._expired:
                    del self._idle[sock]
                    self.closed_by_client += 1
                    self.lock.notify_all()
                    sock.close()
                return None  # closed by the client, or by expire_idle (which closes it)
            self._idle.pop(sock, None)
        return chunk

    def wait_closed_by_client(self, count: int) -> int:
        """Wait (5 s at most) until the client has closed `count` connections; how many."""
        with self.lock:
            self.lock.wait_for(lambda: self.closed_by_client >= count, 5)
            return self.closed_by_client

    def _serve(self, sock: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = self._recv(sock)
                    if chunk is None:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    chunk = self._recv(sock)
                    if chunk is None:
                        return
                    buffer += chunk
                buffer = buffer[length:]
                with self.lock:
                    self.requests_read += 1
                    drop, self.drop_next = self.drop_next, False
                    if not drop:
                        # Idle from here: the answer is on its way.
                        self._idle[sock] = threading.current_thread()
                if drop:
                    sock.close()
                    return
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return

    def expire_idle(self, *, reset: bool = False) -> int:
        """Close every idle connection now, with a FIN (or a reset); how many closed. Returns
        once each is closed: its FIN or reset has been sent."""
        with self.lock:
            victims = dict(self._idle)
            self._idle.clear()
            self._expired.update(victims)
        for sock, thread in victims.items():
            sock.shutdown(socket.SHUT_RD)  # wakes the thread blocked reading it, sends nothing
            thread.join(5)
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        return len(victims)

    def close(self) -> None:
        self.listener.close()
        self.expire_idle()


@contextmanager
def idle_closing_server() -> Iterator[IdleClosingServer]:
    server = IdleClosingServer()
    try:
        yield server
    finally:
        server.close()


def pooled(http: httpx.AsyncClient) -> list[_Connection]:
    transport = http._transport
    assert isinstance(transport, KeepAliveTransport)
    return [conn for idle in transport._idle.values() for conn in idle]


def wait_until_the_close_arrived(http: httpx.AsyncClient) -> None:
    """Block, without letting the event loop run, until the server's FIN or reset is in
    each pooled socket: the loop has not seen it, the kernel has."""
    for conn in pooled(http):
        assert conn.transport is not None
        fd = conn.transport.get_extra_info("socket").fileno()
        assert select.select([fd], [], [], 5)[0], "the server's close never arrived"


def client(transport: KeepAliveTransport | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport or KeepAliveTransport(), timeout=5.0)


class Clock:
    """The transport's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the race: a close already in the socket, not yet seen by the loop --------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_a_connection_the_server_is_closing_is_not_reused(
    run: Callable[[Callable[[], Awaitable[Any]]], Any], reset: bool
) -> None:
    # Without the look at the socket before reuse, the POST goes out on the closing
    # connection, the server's kernel answers with a reset, and the call fails: the rare 502.
    async def scenario() -> tuple[list[int], int, int]:
        with idle_closing_server() as server:
            async with client() as http:
                statuses = [(await http.post(server.url, content=b"{}")).status_code]
                assert server.expire_idle(reset=reset) == 1
                wait_until_the_close_arrived(http)
                statuses.append((await http.post(server.url, content=b"{}")).status_code)
            return statuses, server.accepted, server.requests_read

    statuses, accepted, requests_read = run(scenario)
    assert statuses == [200, 200]
    assert (accepted, requests_read) == (2, 2)  # the second call went out once, on a new one


def test_a_post_whose_first_send_the_socket_refuses_goes_out_on_a_new_connection(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
) -> None:
    # The reset arrives between the look at the socket and the write (made here by skipping
    # the look): the socket refuses the first send, so no byte of the request left, and a
    # POST may go out again.
    async def scenario() -> tuple[list[int], int, int]:
        with idle_closing_server() as server:
            async with client() as http:
                statuses = [(await http.post(server.url, content=b"{}")).status_code]
                server.expire_idle(reset=True)
                wait_until_the_close_arrived(http)
                for conn in pooled(http):
                    conn._poll = None
                statuses.append((await http.post(server.url, content=b"{}")).status_code)
            return statuses, server.accepted, server.requests_read

    statuses, accepted, requests_read = run(scenario)
    assert statuses == [200, 200]
    assert (accepted, requests_read) == (2, 2)


@pytest.mark.parametrize(("method", "resent"), [("POST", False), ("GET", True)])
def test_a_request_written_on_a_closing_connection_is_sent_again_only_if_idempotent(
    run: Callable[[Callable[[], Awaitable[Any]]], Any], method: str, resent: bool
) -> None:
    # The FIN arrives between the look at the socket and the write: the socket takes the
    # request, the server's kernel answers with a reset. Nothing can tell a server that never
    # read it from one that read it and crashed, so a POST fails; a GET goes out again.
    async def scenario() -> tuple[int | str, int, int]:
        with idle_closing_server() as server:
            async with client() as http:
                await http.post(server.url, content=b"{}")
                server.expire_idle()
                wait_until_the_close_arrived(http)
                for conn in pooled(http):
                    conn._poll = None
                try:
                    outcome: int | str = (await http.request(method, server.url)).status_code
                except httpx.RemoteProtocolError as exc:
                    outcome = str(exc)
            return outcome, server.accepted, server.requests_read

    outcome, accepted, requests_read = run(scenario)
    if resent:
        assert (outcome, accepted, requests_read) == (200, 2, 2)
    else:
        assert isinstance(outcome, str)
        assert "not sent again" in outcome
        assert (accepted, requests_read) == (1, 1)


def test_a_post_the_server_read_and_dropped_unanswered_is_not_sent_again(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
) -> None:
    async def scenario() -> tuple[str, int, int]:
        with idle_closing_server() as server:
            async with client() as http:
                await http.post(server.url, content=b"{}")
                server.drop_next = True
                with pytest.raises(httpx.RemoteProtocolError) as failed:
                    await http.post(server.url, content=b"{}")
            return str(failed.value), server.accepted, server.requests_read

    failure, accepted, requests_read = run(scenario)
    assert "not sent again" in failure
    assert (accepted, requests_read) == (1, 2)  # the application read it: once is all


def test_a_fresh_connection_that_fails_is_never_retried(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
) -> None:
    async def scenario() -> tuple[int, int]:
        with idle_closing_server() as server:
            server.drop_next = True
            async with client() as http:
                with pytest.raises(httpx.RemoteProtocolError):
                    await http.get(server.url)
            return server.accepted, server.requests_read

    assert run(scenario) == (1, 1)


# -- idle connections are dropped before a typical server's keep-alive limit ---------------


@pytest.mark.parametrize(("idle", "connections"), [(3.9, 1), (4.0, 2)])
def test_a_connection_idle_for_the_expiry_is_not_reused(
    run: Callable[[Callable[[], Awaitable[Any]]], Any], idle: float, connections: int
) -> None:
    clock = Clock()

    async def scenario() -> tuple[int, int]:
        with idle_closing_server() as server:
            async with client(KeepAliveTransport(keepalive_expiry=4.0, clock=clock)) as http:
                await http.post(server.url, content=b"{}")
                clock.now += idle
                await http.post(server.url, content=b"{}")
                closed = await asyncio.to_thread(server.wait_closed_by_client, connections - 1)
            return server.accepted, closed

    accepted, closed_before_the_end = run(scenario)
    assert accepted == connections
    # The expired one was closed by the client, not left for the server to close.
    assert closed_before_the_end == connections - 1


def test_the_idle_time_counts_from_the_last_byte_received_not_from_the_last_read(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
) -> None:
    # The server's idle timer starts when it has sent the answer; a slow reader that takes
    # its time to read it to the end does not delay that.
    clock = Clock()

    async def scenario() -> int:
        with idle_closing_server() as server:
            async with client(KeepAliveTransport(keepalive_expiry=4.0, clock=clock)) as http:
                async with http.stream("POST", server.url, content=b"{}") as response:
                    clock.now += 3.0
                    await response.aread()
                clock.now += 1.0
                await http.post(server.url, content=b"{}")
            return server.accepted

    assert run(scenario) == 2


def test_expired_connections_at_the_bottom_of_the_pool_are_closed_when_one_comes_back(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
) -> None:
    clock = Clock()

    async def scenario() -> tuple[int, int, int]:
        with idle_closing_server() as server:
            async with client(KeepAliveTransport(keepalive_expiry=4.0, clock=clock)) as http:
                # Two connections: one answered at 0 s, the other at 2 s, pooled in that order.
                async with http.stream("POST", server.url, content=b"{}") as first:
                    clock.now += 2.0
                    async with http.stream("POST", server.url, content=b"{}") as second:
                        await first.aread()
                        await second.aread()
                clock.now += 2.5  # 4.5 s and 2.5 s idle
                # Takes the one on top; when it comes back, the other is past the expiry.
                await http.post(server.url, content=b"{}")
                before = await asyncio.to_thread(server.wait_closed_by_client, 1)
                left = len(pooled(http))
            return server.accepted, before, left

    accepted, closed, left = run(scenario)
    assert accepted == 2
    assert closed == 1  # the one idle for 4.5 s, closed by the client as the other came back
    assert left == 1


def test_a_connection_back_in_the_pool_reads_on_to_see_the_server_close(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
) -> None:
    # A large answer read without waiting pauses reading; a pooled connection must read on,
    # or the loop never sees the server close it.
    async def scenario() -> list[bool]:
        with idle_closing_server() as server:
            transport = KeepAliveTransport(read_buffer=16)
            async with client(transport) as http:
                await http.post(server.url, content=b"{}")
                conns = pooled(http)
                assert len(conns) == 1
                conn = conns[0]
                assert conn.transport is not None
                conn._reading_paused = True
                conn.transport.pause_reading()
                transport._idle.clear()
                transport._release((b"http", b"127.0.0.1", server.listener.getsockname()[1]), conn)
                return [conn.transport.is_reading(), conn._reading_paused]

    assert run(scenario) == [True, False]


def test_the_transport_and_the_setting_agree_on_the_default() -> None:
    assert Settings().upstream_idle == KEEPALIVE_EXPIRY < 5.0
