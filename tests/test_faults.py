"""The fault catalogue ("What held, and must keep holding"), black-box.

The gateway runs as a real process in front of tests/fault_upstream.py, a misbehaving
Ollama chosen by model name. The rest of the catalogue lives with the code it is about
and carries the same `faults` marker: kill -9 under load, a full disk, damaged files and
a second gateway in tests/test_store_process.py. `pytest -m faults` runs the whole group.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.fault_upstream import FaultUpstream, start_fault_upstream
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import ask, assert_error, data, read_events, records, unique, wait_record
from tests.sse import SSEEvent, SSEParser

pytestmark = [pytest.mark.server, pytest.mark.faults]

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"
JSON_REPLY = {"Accept": "application/json"}
# The gateway's --timeout in the stall tests: long enough for a loaded machine to answer a
# healthy request, short enough to keep the suite quick. A stream opens (sends `start`)
# after OPEN_WAIT whether Ollama has answered or not, well before the timeout.
TIMEOUT = 1.0
OPEN_WAIT = 0.1
# Concurrent streams where the catalogue asks for many (it measured 200 and 300; this
# machine has 2 cores shared with other suites).
MANY = 64


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    with start_fault_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def impatient(
    upstream: FaultUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("faults") / "data"
    with start_gateway(
        data_dir, "--ollama", upstream.url, "--timeout", str(TIMEOUT), "--open-wait", str(OPEN_WAIT)
    ) as server:
        yield server
    assert "Traceback" not in server.logs(), server.logs()


class Stream(threading.Thread):
    """One POST ask_async read to its end in the background."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.body = body
        self.first_token = threading.Event()
        self.events: list[SSEEvent] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        parser = SSEParser()
        try:
            with (
                httpx.Client(base_url=self.url, timeout=60, trust_env=False) as client,
                client.stream("POST", STREAM, json=self.body) as response,
            ):
                assert response.status_code == 200, response.read()
                for text in response.iter_text():
                    self.events.extend(parser.feed(text))
                    if any(e.event == "token" for e in self.events):
                        self.first_token.set()
        except (httpx.HTTPError, AssertionError) as exc:
            self.failure = exc
        finally:
            self.first_token.set()

    @property
    def id(self) -> str:
        call_id: str = data(self.events[0])["id"]
        return call_id


def start_streams(url: str, body: dict[str, Any], count: int = MANY) -> list[Stream]:
    """`count` streams, each past its first token."""
    streams = [Stream(url, body) for _ in range(count)]
    for stream in streams:
        stream.start()
    for stream in streams:
        assert stream.first_token.wait(30)
        assert stream.failure is None, stream.failure
    return streams


def project_records(client: httpx.Client, project: str, count: int) -> list[dict[str, Any]]:
    """The project's records once there are `count` (a cancelled call is recorded late)."""
    deadline = time.monotonic() + 30
    while True:
        found = records(client, project=project, limit=1000)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# -- upstream killed ------------------------------------------------------------------------


def test_an_upstream_killed_under_many_streams_ends_each_with_an_error_and_a_record(
    tmp_path: Path,
) -> None:
    project = unique("killed")
    with (
        start_fault_upstream() as upstream,
        start_gateway(tmp_path / "data", "--ollama", upstream.url) as gateway,
        gateway.client() as client,
    ):
        streams = start_streams(gateway.url, ask("drip-50", "go", project=project))

        upstream.kill()
        for stream in streams:
            stream.join(30)
        found = project_records(client, project, MANY)
        upstream.restart()
        after = client.post(SYNC, json=ask("tokens-2", "again"), headers=JSON_REPLY)
        health = client.get("/health").json()

    for stream in streams:
        assert stream.failure is None, stream.failure
        assert stream.events[-1].event == "error", stream.events[-3:]
    codes = {data(s.events[-1])["error"]["code"] for s in streams}
    assert len(found) == MANY
    assert {r["id"] for r in found} == {s.id for s in streams}
    assert {(r["status"], r["error_code"]) for r in found} == {("error", code) for code in codes}
    assert after.status_code == 200  # recovered: the same gateway asks the restarted upstream
    assert after.json()["output"] == "w0 w1 "
    assert health["status"] == "ok"
    assert "Traceback" not in gateway.logs()


# -- upstream stalled -----------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["stall-head", "stall-body", "stall-mid"])
def test_a_stalled_ask_is_a_504_at_the_timeout_and_recorded(impatient: Gateway, phase: str) -> None:
    project = unique("stall")
    with impatient.client() as client:
        response = client.post(SYNC, json=ask(phase, "hi", project=project), headers=JSON_REPLY)

        assert_error(response, 504, "upstream_timeout")
        record = wait_record(client, project)
    assert (record["status"], record["error_code"]) == ("error", "upstream_timeout")
    assert record["id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("phase", "output"), [("stall-head", ""), ("stall-body", ""), ("stall-mid", "w0 w1 w2 ")]
)
def test_a_stalled_stream_ends_at_the_timeout_and_is_recorded(
    impatient: Gateway, phase: str, output: str
) -> None:
    project = unique("stall")
    with impatient.client() as client:
        with client.stream("POST", STREAM, json=ask(phase, "hi", project=project)) as response:
            events, _ = read_events(response)
        record = wait_record(client, project)

    assert events[0].event == "start"
    # A `loading` event may come first: the stand-in had not loaded the model.
    told = [e.event for e in events[1:-1] if e.event != "loading"]
    assert told == ["token"] * len(output.split())
    assert events[-1].event == "error"
    assert data(events[-1])["error"]["code"] == "upstream_timeout"
    assert (record["status"], record["error_code"]) == ("error", "upstream_timeout")
    assert record["output"] == output


# -- upstream garbage -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("garbage", "upstream_bad_response"),  # a body or a line that is not JSON
        ("noline-1000", "upstream_bad_response"),  # a last line cut short
        ("garbage-http", "upstream_bad_response"),  # not HTTP at all
        ("badchunk", "upstream_bad_response"),  # HTTP, with a chunk size that is not hex
    ],
)
@pytest.mark.parametrize("path", [SYNC, STREAM])
def test_upstream_garbage_is_a_502_and_recorded(
    impatient: Gateway, model: str, code: str, path: str
) -> None:
    project = unique("garbage")
    with impatient.client() as client:
        response = client.post(path, json=ask(model, "hi", project=project), headers=JSON_REPLY)
        record = wait_record(client, project)

    if response.headers["content-type"].startswith("text/event-stream"):
        events, _ = read_events(response)
        assert events[0].event == "start"
        assert events[-1].event == "error"
        error = data(events[-1])["error"]
        assert error["status"] == 502
    else:
        error = assert_error(response, 502, code)
    assert error["code"] == code
    assert (record["status"], record["error_code"]) == ("error", error["code"])


# -- SIGTERM with many streams --------------------------------------------------------------


def test_sigterm_with_many_streams_exits_0_with_one_record_each(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    project = unique("sigterm")
    folder = tmp_path / "data"
    gateway = start_gateway(folder, "--ollama", upstream.url, "--grace", "1")
    with gateway:
        streams = start_streams(gateway.url, ask("drip-100", "go", project=project))

        gateway.signal(signal.SIGTERM)
        code = gateway.wait(30)
        for stream in streams:
            stream.join(30)

    assert code == 0, gateway.logs()
    assert "Traceback" not in gateway.logs()
    for stream in streams:
        assert stream.failure is None, stream.failure
        assert stream.events[-1].event == "error"
        assert data(stream.events[-1])["error"]["code"] == "server_shutdown"
    # Written before the exit: a restart reads them back, each once.
    with start_gateway(folder, "--ollama", upstream.url) as again, again.client() as client:
        found = records(client, project=project, limit=1000)
    assert sorted(r["id"] for r in found) == sorted(s.id for s in streams)
    assert {(r["status"], r["error_code"]) for r in found} == {("cancelled", "server_shutdown")}


# -- a short soak ---------------------------------------------------------------------------

SOAK_ASKS = 5000
SOAK_CLIENTS = 4


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_soak_of_5000_asks_loses_and_repeats_nothing(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    project = unique("soak")
    answered: list[str] = []
    lock = threading.Lock()

    def client_run(gateway: Gateway, n: int, asks: int) -> None:
        body = ask("tokens-3", "soak", project=project, process_id=f"c{n}")
        with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
            for _ in range(asks):
                response = client.post(SYNC, json=body, headers=JSON_REPLY)
                assert response.status_code == 200, response.text
                with lock:
                    answered.append(response.json()["id"])

    def run(gateway: Gateway, asks: int) -> None:
        threads = [
            threading.Thread(target=client_run, args=(gateway, n, asks // SOAK_CLIENTS))
            for n in range(SOAK_CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    with start_gateway(tmp_path / "data", "--ollama", upstream.url) as gateway:
        run(gateway, 1000)  # warm: the pools and caches reach their working size
        warm_kb = _rss_kb(gateway.proc.pid)
        run(gateway, SOAK_ASKS - 1000)
        end_kb = _rss_kb(gateway.proc.pid)
        with gateway.client(timeout=60) as client:
            exported = client.get("/api/v1/admin/export", params={"project": project})
            totals = client.get("/api/v1/admin/stats", params={"project": project}).json()

    ids = [r["id"] for r in msgspec.json.decode(exported.content)]
    assert len(answered) == SOAK_ASKS
    assert len(set(answered)) == SOAK_ASKS
    assert sorted(ids) == sorted(answered)  # none lost, none twice
    assert totals["totals"]["calls"] == SOAK_ASKS
    # Flat, not a measurement: 4,000 asks must not grow the process by as much as 64 MB.
    assert end_kb - warm_kb < 64 * 1024, (warm_kb, end_kb)
    print(f"soak: RSS {warm_kb // 1024} MB after 1,000 asks, {end_kb // 1024} MB after 5,000")


# -- bad admin requests ---------------------------------------------------------------------


def _bad_admin_requests() -> list[tuple[str, str, dict[str, Any]]]:
    dash, stats, export, keys = (
        "/api/v1/admin/dashboard",
        "/api/v1/admin/stats",
        "/api/v1/admin/export",
        "/api/v1/admin/keys",
    )
    bad_params: list[dict[str, str]] = [
        {"limit": "0"},
        {"limit": "-5"},
        {"limit": "1e9"},
        {"limit": "ten"},
        {"offset": "-1"},
        {"cursor": "garbage"},
        {"cursor": "ZZZZZZZZZZZZZZZZZZZZ"},
        {"after": "0" * 21},
        {"after": "' OR 1=1 --"},
        {"since": "yesterday"},
        {"since": "2026-13-45"},
        {"until": "9999-99-99T99:99"},
        {"since": "0001-01-01T00:00:00+01:00"},
        {"status": "fine"},
        {"colour": "blue"},
        {"bucket": "fortnight"},
        {"format": "xml"},
        {"limit": "1", "cursor": "0" * 19 + "g"},
    ]
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for path in (dash, stats, export):
        requests += [("GET", path, {"params": params}) for params in bad_params]
    requests += [
        ("GET", dash, {"params": [("limit", "1"), ("limit", "2")]}),
        ("POST", dash, {}),
        ("DELETE", stats, {}),
        ("GET", dash, {"headers": {"Authorization": "Bearer wrong"}}),
        ("GET", dash, {"headers": {"Authorization": "Basic Zm9vOmJhcg=="}}),
        ("GET", dash, {"headers": {"Authorization": "Bearer " + "x" * 8000}}),
        ("GET", dash, {"headers": {"If-None-Match": "\x7f" * 100}}),
        ("POST", keys, {"content": b"{not json"}),
        ("POST", keys, {"content": b"", "headers": {"Content-Type": "application/json"}}),
        ("POST", keys, {"json": {"label": ""}}),
        ("POST", keys, {"json": {"label": "x" * 1000}}),
        ("POST", keys, {"json": {"label": "ok", "models": ["../../etc"]}}),
        ("POST", keys, {"json": {"label": "ok", "models": "llama3"}}),
        ("POST", keys, {"json": {"label": "ok", "limits": {"rpm": -1}}}),
        ("POST", keys, {"json": {"label": "ok", "surprise": 1}}),
        ("POST", keys, {"json": ["label", "ok"]}),
        ("POST", keys, {"content": b"\xff\xfe\x00", "headers": {"Content-Type": "text/plain"}}),
        ("PATCH", keys + "/nope", {"json": {"label": "x"}}),
        ("PATCH", keys + "/nope", {"content": b"{"}),
        ("PATCH", keys + "/" + "a" * 500, {"json": {}}),
        ("DELETE", keys + "/nope", {}),
        ("DELETE", keys + "/%00", {}),
        ("PUT", keys, {"json": {}}),
        ("GET", keys + "/x/y/z", {}),
    ]
    return requests


# Odd but well-formed: answered (empty, as nothing matches), never a 500.
ODD_ADMIN_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/admin/dashboard", {"params": {"offset": "9" * 40}}),
    ("GET", "/api/v1/admin/dashboard", {"params": {"project": "x" * 5000}}),
    ("GET", "/api/v1/admin/stats", {"params": {"model": "\x00"}}),
    ("GET", "/api/v1/admin/export", {"params": {"process_id": "\u202e\ufeff"}}),
]


def test_a_burst_of_bad_admin_requests_gets_no_500(upstream: FaultUpstream, tmp_path: Path) -> None:
    bad = _bad_admin_requests()
    with (
        start_gateway(tmp_path / "data", "--ollama", upstream.url) as gateway,
        gateway.client() as client,
    ):
        answers = [(m, path, client.request(m, path, **kw)) for m, path, kw in bad]
        odd = [client.request(m, path, **kw) for m, path, kw in ODD_ADMIN_REQUESTS]
        health = client.get("/health")
        keys = client.get("/api/v1/admin/keys").json()

    assert len(bad) >= 75
    broken = [(m, p, r.status_code, r.text[:200]) for m, p, r in answers if r.status_code >= 500]
    assert not broken
    assert [r.status_code for r in odd] == [200] * len(odd)
    for method, path, response in answers:
        assert 400 <= response.status_code < 500, (method, path, response.text)
        assert "Traceback" not in response.text
        if response.headers.get("content-type") == "application/json":
            assert set(response.json()) == {"error"}
    assert health.status_code == 200
    assert keys == [] or keys == {"keys": []}  # none of them made a key
    assert "Traceback" not in gateway.logs()
