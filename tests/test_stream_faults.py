"""Hang-ups against an upstream that never pauses, and bounded buffers.

The upstream is tests/fault_upstream.py, which writes as fast as the socket allows and counts
what it wrote and when its client left; the gateway is a real `python app.py` process. What is
asserted is what must hold whatever the machine's speed: the upstream request is closed, the
call is recorded `cancelled` (or `error`, saying why), what the upstream managed to write after
the client left stays small, and the gateway's memory stays flat. Nothing here asserts a time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.fault_upstream import FaultUpstream, start_fault_upstream
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import data, read_events, unique

pytestmark = [pytest.mark.server, pytest.mark.faults]

# Generous: the machine is shared, and these are deadlines for things that take milliseconds.
DEADLINE = 20.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    with start_fault_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(upstream: FaultUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("stream-faults") / "data"
    with start_gateway(
        data_dir,
        "--ollama",
        upstream.url,
        "--max-upstream-line",
        str(1 << 20),
        "--max-upstream-body",
        str(1 << 20),
        "--max-record-output",
        "65536",
    ) as server:
        yield server
    assert "Traceback" not in server.logs(), server.logs()


@pytest.fixture(scope="module")
def plain_gateway(
    upstream: FaultUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The gateway with every bound at its default: what a memory bound is measured against."""
    data_dir = tmp_path_factory.mktemp("stream-faults-defaults") / "data"
    with start_gateway(data_dir, "--ollama", upstream.url) as server:
        yield server
    assert "Traceback" not in server.logs(), server.logs()


def rss_mb(gateway: Gateway) -> float:
    for line in Path(f"/proc/{gateway.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_stream(gateway: Gateway, model: str, project: str) -> socket.socket:
    """A raw client that sends one ask_async and reads nothing (yet)."""
    body = msgspec.json.encode({"agent": model, "content": "hi", "project": project})
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /api/v1/ai/ask_async HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


def read_some(sock: socket.socket, size: int) -> int:
    got = 0
    while got < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    return got


def record_of(client: httpx.Client, project: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        found = client.get("/api/v1/admin/dashboard", params={"project": project}).json()
        if found:
            assert len(found) == 1, found
            record: dict[str, Any] = found[0]
            return record
        assert time.monotonic() < deadline, f"no record for {project}"
        time.sleep(0.05)


def upstream_call(upstream: FaultUpstream, model: str, before: int) -> dict[str, Any]:
    calls = [c for c in upstream.stats()[before:] if c["model"] == model]
    assert len(calls) == 1, calls
    return calls[0]


def closed_upstream(upstream: FaultUpstream, model: str, before: int) -> dict[str, Any]:
    """The upstream call, once its connection is closed (the gateway let go of it)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        calls = [c for c in upstream.stats()[before:] if c["model"] == model]
        assert len(calls) <= 1, calls
        if calls and not calls[0]["open"]:
            return calls[0]
        assert time.monotonic() < deadline, f"the gateway never closed the upstream: {calls}"
        time.sleep(0.05)


@pytest.mark.parametrize("token_bytes", [1024, 20])
def test_a_client_that_leaves_a_flooding_upstream_is_noticed(
    gateway: Gateway, upstream: FaultUpstream, token_bytes: int
) -> None:
    """§1: the upstream writes tokens back to back; the client reads a while, then closes."""
    model, project = f"flood-{token_bytes}", unique("flood")
    before = len(upstream.stats())
    rss_before = rss_mb(gateway)
    sock = open_stream(gateway, model, project)
    assert read_some(sock, 2 << 20) >= 2 << 20  # it streams
    left_at_bytes = upstream_call(upstream, model, before)["bytes_written"]
    sock.close()

    call = closed_upstream(upstream, model, before)
    with gateway.client() as client:
        record = record_of(client, project)
        health = client.get("/health", timeout=DEADLINE)

    assert record["status"] == "cancelled"
    # What the upstream wrote after the client left: socket buffers and one stream buffer,
    # not the 1.1 GB of the fault run.
    assert call["bytes_written"] - left_at_bytes < 32 << 20, call
    assert health.status_code == 200
    assert rss_mb(gateway) - rss_before < 100


@pytest.mark.parametrize("clients", [1, 50])
def test_clients_that_never_read_hold_little_and_are_released(
    plain_gateway: Gateway, upstream: FaultUpstream, clients: int
) -> None:
    """§1/§2: streams whose clients never read stop reading upstream, hold a bounded amount
    each, and end when the clients close. At the default bounds: each such stream keeps up
    to a megabyte of answer for its record, and the upstream's bytes are handed on 64 KB at
    a time (before that, half-megabyte batches took 50 streams to 250 MB)."""
    gateway = plain_gateway
    model = "flood-1024"
    projects = [unique("idle") for _ in range(clients)]
    before = len(upstream.stats())
    socks = [open_stream(gateway, model, project) for project in projects]
    deadline = time.monotonic() + DEADLINE
    while len([c for c in upstream.stats()[before:] if c["model"] == model]) < clients:
        assert time.monotonic() < deadline, "the streams did not all start"
        time.sleep(0.05)
    # Let every stream fill what it may hold: the upstream's writes then stall.
    time.sleep(1.0)
    written = [c["bytes_written"] for c in upstream.stats()[before:]]
    held = rss_mb(gateway)
    for sock in socks:
        sock.close()

    with gateway.client() as client:
        records = [record_of(client, project) for project in projects]
    deadline = time.monotonic() + DEADLINE
    while any(c["open"] for c in upstream.stats()[before:] if c["model"] == model):
        assert time.monotonic() < deadline, "the gateway never closed some upstream requests"
        time.sleep(0.05)

    assert held < 200, f"{clients} idle streams: {held:.0f} MB"
    # Each upstream got stopped by backpressure: socket buffers and the stream buffer.
    assert max(written) < 16 << 20, written
    assert {r["status"] for r in records} == {"cancelled"}


def test_a_line_without_a_newline_is_cut_at_the_bound(
    gateway: Gateway, upstream: FaultUpstream
) -> None:
    """§2: one 200 MB line is refused once it passes --max-upstream-line, not buffered."""
    model, project = "noline-200m", unique("noline")
    before = len(upstream.stats())
    rss_before = rss_mb(gateway)
    with gateway.client(timeout=DEADLINE) as client:
        response = client.post(
            "/api/v1/ai/ask_async", json={"agent": model, "content": "hi", "project": project}
        )
        events, _ = read_events(response)
        record = record_of(client, project)
    call = closed_upstream(upstream, model, before)

    # `loading` may come between: the stand-in had not loaded the model.
    assert [e.event for e in events if e.event != "loading"] == ["start", "error"]
    error = data(events[-1])["error"]
    assert error["code"] == "upstream_bad_response"
    assert "--max-upstream-line" in error["message"]
    assert record["status"] == "error"
    assert record["error_code"] == "upstream_bad_response"
    assert call["bytes_written"] < 32 << 20, call
    assert rss_mb(gateway) - rss_before < 100


def test_a_whole_answer_larger_than_the_bound_is_refused(
    gateway: Gateway, upstream: FaultUpstream
) -> None:
    """§2: a non-streamed body past --max-upstream-body is a 502, recorded, not read whole."""
    project = unique("bigbody")
    before = len(upstream.stats())
    rss_before = rss_mb(gateway)
    with gateway.client(timeout=DEADLINE) as client:
        response = client.post(
            "/api/v1/ai/ask_sync",
            json={"agent": "bigbody-50m", "content": "hi", "project": project},
        )
        record = record_of(client, project)
    closed_upstream(upstream, "bigbody-50m", before)

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"
    assert "--max-upstream-body" in response.json()["error"]["message"]
    assert record["status"] == "error"
    assert rss_mb(gateway) - rss_before < 100


def test_a_huge_valid_token_is_relayed_and_its_record_keeps_the_head(
    gateway: Gateway,
) -> None:
    """§2: a 900 KB token passes (within --max-upstream-line); the record keeps 64 KB of it
    and says how long the whole answer was."""
    project = unique("bigtoken")
    with gateway.client(timeout=DEADLINE) as client:
        response = client.post(
            "/api/v1/ai/ask_async",
            json={"agent": "bigtoken-900k", "content": "hi", "project": project},
        )
        events, _ = read_events(response)
        record = record_of(client, project)

    tokens = [data(e)["content"] for e in events if e.event == "token"]
    assert events[-1].event == "done"
    assert sum(map(len, tokens)) == 900 * 1024
    assert record["status"] == "ok"
    assert record["output_truncated"] is True
    assert record["output_chars"] == 900 * 1024
    assert len(record["output"]) == 65536
    assert record["output"] == "".join(tokens)[:65536]


def test_a_client_that_reads_nothing_is_given_up_after_the_send_timeout(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    """A client that keeps its connection but takes nothing: after --send-timeout the stream
    ends, the upstream is closed, and the record says why."""
    project = unique("stalled")
    before = len(upstream.stats())
    with start_gateway(
        tmp_path / "data", "--ollama", upstream.url, "--send-timeout", "1"
    ) as gateway:
        sock = open_stream(gateway, "flood-1024", project)
        try:
            call = closed_upstream(upstream, "flood-1024", before)
            with gateway.client() as client:
                record = record_of(client, project)
        finally:
            sock.close()

    assert call["closed_at"] is not None
    assert record["status"] == "cancelled"
    assert record["error_code"] == "client_stalled"
    assert "--send-timeout" in record["error"]


def open_small_stream(gateway: Gateway, model: str, project: str) -> socket.socket:
    """open_stream with a small receive buffer, so the gateway's sends block early."""
    body = msgspec.json.encode({"agent": model, "content": "hi", "project": project})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /api/v1/ai/ask_async HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


@pytest.mark.parametrize("model", ["flood-1024", "drip-5"])
def test_clients_that_read_nothing_then_close_free_their_upstream_at_once(
    plain_gateway: Gateway, upstream: FaultUpstream, model: str
) -> None:
    """20 streams whose clients read nothing for 5 s (with flood-1024 the
    gateway's sends then wait on their full sockets; with drip-5 they do not), then close:
    each upstream request is closed as the client goes, not after --send-timeout (60 s here;
    a fault run saw 2 of 20 closed, the rest waiting for it), and each record says
    `cancelled` (not `client_stalled`, the send timeout's). It held on main as it is."""
    gateway, clients = plain_gateway, 20
    projects = [unique("blocked") for _ in range(clients)]
    before = len(upstream.stats())
    socks = [open_small_stream(gateway, model, project) for project in projects]
    deadline = time.monotonic() + DEADLINE
    while len([c for c in upstream.stats()[before:] if c["model"] == model]) < clients:
        assert time.monotonic() < deadline, "the streams did not all start"
        time.sleep(0.05)
    # Five seconds of reading nothing, as in the fault run: with flood-1024 every socket is
    # full by then and each send waits on its client.
    time.sleep(5.0)
    left_at = time.monotonic()
    for sock in socks:
        sock.close()

    deadline = left_at + DEADLINE
    while any(c["open"] for c in upstream.stats()[before:] if c["model"] == model):
        assert time.monotonic() < deadline, "the gateway never closed some upstream requests"
        time.sleep(0.05)
    with gateway.client() as client:
        records = [record_of(client, project) for project in projects]

    assert {r["status"] for r in records} == {"cancelled"}
    assert {r["error_code"] for r in records} == {None}, records[0]
