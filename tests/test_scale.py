"""Several gateways as one: real gateway processes sharing one PostgreSQL database and one
Redis, behind nginx on loopback; a database and a Redis that go away mid-run (a proxy cut
and restored, never the machine's servers); --workers N.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import pg, redis_server
from tests.gateway_proc import ADMIN_TOKEN, Gateway, start_gateway
from tests.helpers import ask, unique
from tests.nginx import nginx
from tests.ollama_standin import StandIn
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.server

PROMISE_SECONDS = 1.0
PASSWORD = "s3cret-pw-never-shown"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Accept": "application/json"}


class Cluster:
    def __init__(self, a: Gateway, b: Gateway, url: str) -> None:
        self.a, self.b, self.url = a, b, url


@contextlib.contextmanager
def cluster(
    standin: StandIn, folder: Path, dsn: str, *flags: str, redis: str | None = None
) -> Iterator[Cluster]:
    """Two gateways on one database (and one Redis), behind nginx."""
    args = ["--ollama", standin.url, "--store", dsn, *flags]
    if redis:
        args += ["--redis", redis]
    with (
        start_gateway(folder / "a" / "data", *args) as a,
        start_gateway(folder / "b" / "data", *args) as b,
        nginx(folder / "nginx", [a.port, b.port]) as url,
    ):
        yield Cluster(a, b, url)
    for gateway in (a, b):
        assert "Traceback" not in gateway.logs(), gateway.logs()


def eventually(done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def asking(url: str, key: str | None = None, *, project: str | None = None) -> httpx.Response:
    headers = {**JSON, **({"Authorization": f"Bearer {key}"} if key else ADMIN)}
    body = ask(project=project) if project else ask()
    return httpx.post(f"{url}/api/v1/ai/ask_sync", json=body, headers=headers, timeout=10)


def stored_ids(dsn: str, project: str) -> list[str]:
    ids = pg.column(dsn, "SELECT id FROM ollama_host.usage WHERE project = %s", project)
    return [str(i) for i in ids]


def test_two_gateways_behind_nginx_share_keys_limits_and_the_log(
    standin: StandIn, tmp_path: Path, dsn: str
) -> None:
    redis_server.require()
    with cluster(standin, tmp_path, dsn, redis=redis_server.URL) as c:
        # A key made through one works on the other. (Until a gateway knows of some key it
        # lets anyone ask, as a single gateway does: wait until b knows of the first.)
        def listed(gateway: Gateway) -> set[str]:
            found = httpx.get(f"{gateway.url}/api/v1/admin/keys", headers=ADMIN).json()
            return {k["id"] for k in found}

        made = httpx.post(f"{c.a.url}/api/v1/admin/keys", json={"label": "k"}, headers=ADMIN)
        first = made.json()["info"]["id"]
        eventually(lambda: first in listed(c.b), "b knows of a key")
        made = httpx.post(f"{c.a.url}/api/v1/admin/keys", json={"label": "k"}, headers=ADMIN)
        key, key_id = made.json()["key"], made.json()["info"]["id"]
        eventually(lambda: asking(c.b.url, key).status_code == 200, "the key works on b")
        assert asking(c.url, key).status_code == 200  # and through nginx
        assert asking(c.b.url, "ohk_00000000_made-up").status_code == 401

        # Revoked through one, it stops on the other.
        httpx.delete(f"{c.b.url}/api/v1/admin/keys/{key_id}", headers=ADMIN)
        eventually(lambda: asking(c.a.url, key).status_code == 401, "revoked on a too")

        # A limit of 10 requests a minute holds across both together.
        made = httpx.post(
            f"{c.a.url}/api/v1/admin/keys",
            json={"label": "ten", "limits": {"rpm": 10}},
            headers=ADMIN,
        )
        ten, ten_id = made.json()["key"], made.json()["info"]["id"]
        eventually(lambda: ten_id in listed(c.b), "b knows the limited key")
        began = time.monotonic()
        codes = {"a": [0, 0], "b": [0, 0]}
        for _ in range(8):
            for name, gateway in (("a", c.a), ("b", c.b)):
                status = asking(gateway.url, ten).status_code
                assert status in (200, 429)
                codes[name][status == 429] += 1
        refilled = int((time.monotonic() - began) * 10 / 60)
        admitted = codes["a"][0] + codes["b"][0]
        assert 10 <= admitted <= 10 + refilled, codes
        # Each refused some, once the other had used the minute's budget.
        assert codes["a"][1], codes
        assert codes["b"][1], codes

        # Either dashboard shows both gateways' calls: a's ETag moves with a call made
        # through b, and the page it then gives holds that call.
        project = unique("both")
        dashboard = f"{c.a.url}/api/v1/admin/dashboard"
        etag = httpx.get(dashboard, params={"project": project}, headers=ADMIN).headers["etag"]
        through_b = asking(c.b.url, project=project).json()["id"]

        def moved_with_b() -> bool:
            again = httpx.get(
                dashboard, params={"project": project}, headers={**ADMIN, "If-None-Match": etag}
            )
            if again.status_code == 304:
                return False
            return [r["id"] for r in again.json()] == [through_b]

        eventually(moved_with_b, "a's dashboard moves and shows b's call")
        ids = {through_b, asking(c.a.url, project=project).json()["id"]}

        def shows_both(gateway: Gateway) -> bool:
            page = httpx.get(
                f"{gateway.url}/api/v1/admin/dashboard", params={"project": project}, headers=ADMIN
            )
            return {r["id"] for r in page.json()} == ids

        eventually(lambda: shows_both(c.a), "a's dashboard shows both calls")
        eventually(lambda: shows_both(c.b), "b's dashboard shows both calls")
        health = httpx.get(f"{c.url}/health").json()
        assert (health["status"], health["store"]["status"]) == ("ok", "ok")
        assert health["limits"]["shared"] == redis_server.URL


class Load:
    """Clients asking until stopped; remembers when each answer ended, and by which URL."""

    def __init__(self, urls: list[str], project: str) -> None:
        self.project = project
        self.finished: dict[str, tuple[float, str]] = {}
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url,)) for url in urls]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str) -> None:
        body = ask(content="go [[tokens=3]]", project=self.project)
        with httpx.Client(base_url=url, timeout=10.0, headers={**JSON, **ADMIN}) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/api/v1/ai/ask_sync", json=body)
                except httpx.TransportError:
                    with self._lock:
                        self.failures += 1
                    time.sleep(0.01)
                    continue
                ended = time.monotonic()
                with self._lock:
                    if response.status_code == 200:
                        self.finished[response.json()["id"]] = (ended, url)
                    else:
                        self.failures += 1

    def count(self) -> int:
        with self._lock:
            return len(self.finished)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_kill_9_of_one_gateway_under_load_loses_no_call_finished_a_second_before(
    standin: StandIn, tmp_path: Path, dsn: str
) -> None:
    seed = random.randrange(1 << 30)
    project = unique("kill")
    with cluster(standin, tmp_path, dsn) as c:
        load = Load([c.a.url, c.a.url, c.b.url, c.url, c.url], project)
        eventually(lambda: load.count() > 50, "calls are answered")
        time.sleep(random.Random(seed).uniform(0.5, 2.0))  # a random moment under load
        killed_at = time.monotonic()
        c.a.signal(signal.SIGKILL)
        c.a.wait()
        kept_at_kill = set(stored_ids(dsn, project))
        eventually(lambda: load.count() > len(kept_at_kill) + 50, "b goes on answering")
        load.stop()
        c.b.signal(signal.SIGTERM)
        c.b.wait()

    promised = {i for i, (ended, _) in load.finished.items() if ended < killed_at - PROMISE_SECONDS}
    kept = stored_ids(dsn, project)
    assert promised <= kept_at_kill, f"seed {seed}: lost {len(promised - kept_at_kill)}"
    by_b = {i for i, (_, url) in load.finished.items() if url == c.b.url}
    assert by_b <= set(kept), f"seed {seed}: b stopped cleanly, yet lost records"
    assert len(kept) == len(set(kept))


def test_the_database_going_away_mid_run_holds_records_and_writes_each_once(
    standin: StandIn, tmp_path: Path, dsn: str
) -> None:
    project = unique("away")
    with TcpProxy("127.0.0.1", 5432) as proxy:
        name = dsn.rsplit("/", 1)[1]
        address = pg.dsn_of(name, port=proxy.port).replace("postgres@", f"postgres:{PASSWORD}@")
        gateway = start_gateway(tmp_path / "data", "--ollama", standin.url, "--store", address)
        with gateway, gateway.client() as client:
            before = [asking(gateway.url, project=project) for _ in range(5)]
            proxy.cut()
            during = [asking(gateway.url, project=project) for _ in range(20)]
            eventually(
                lambda: client.get("/health").json()["store"]["status"] == "degraded",
                "/health says the store is degraded",
            )
            degraded = client.get("/health").json()
            dashboard = client.get("/api/v1/admin/dashboard")
            proxy.restore()
            eventually(
                lambda: client.get("/health").json()["status"] == "ok", "/health says ok again"
            )
            after = [asking(gateway.url, project=project) for _ in range(5)]
            eventually(lambda: len(stored_ids(dsn, project)) >= 30, "every record is written")
        logs = gateway.logs()

    answered = [r for r in before + during + after if r.status_code == 200]
    assert len(answered) == 30  # every call was answered throughout
    assert degraded["status"] == "degraded"
    assert degraded["store"]["pending"] > 0
    assert f"127.0.0.1:{proxy.port}" in degraded["store"]["error"]
    assert dashboard.status_code == 503
    assert dashboard.json()["error"]["code"] == "store_unavailable"
    kept = stored_ids(dsn, project)
    assert sorted(kept) == sorted(r.json()["id"] for r in answered)  # each exactly once
    assert PASSWORD not in logs + str(degraded) + dashboard.text
    assert "Traceback" not in logs


def test_redis_going_away_mid_run_leaves_the_gateway_counting_alone(
    standin: StandIn, tmp_path: Path, dsn: str
) -> None:
    redis_server.require()
    with TcpProxy("127.0.0.1", 6379) as proxy:
        url = redis_server.through(proxy.port)
        args = ["--ollama", standin.url, "--store", dsn, "--redis", url, "--key-rpm", "1000"]
        gateway = start_gateway(tmp_path / "data", *args)
        with gateway, gateway.client() as client:
            key = client.post("/api/v1/admin/keys", json={"label": "k"}).json()["key"]
            before = [asking(gateway.url, key).status_code for _ in range(3)]
            proxy.cut()
            during = [asking(gateway.url, key).status_code for _ in range(10)]
            degraded = client.get("/health").json()
            proxy.restore()

            def shared_again() -> bool:
                asking(gateway.url, key)
                return bool(client.get("/health").json()["limits"]["status"] == "ok")

            eventually(shared_again, "the limits are shared again")
        logs = gateway.logs()

    assert before == during[:3] == [200, 200, 200]
    assert set(during) == {200}
    assert degraded["status"] == "degraded"
    assert degraded["limits"]["status"] == "degraded"
    assert "counted by each gateway alone" in degraded["limits"]["error"]
    assert "counted by each gateway alone" in logs
    assert "Traceback" not in logs


def test_workers_serve_one_port_and_stop_cleanly_with_every_record(
    standin: StandIn, tmp_path: Path, dsn: str
) -> None:
    project = unique("workers")
    gateway = start_gateway(
        tmp_path / "data", "--ollama", standin.url, "--store", dsn, "--workers", "2"
    )
    with gateway:
        workers = _children(gateway.proc.pid)
        load = Load([gateway.url] * 4, project)
        eventually(lambda: load.count() > 100, "calls are answered")
        # A stream still running when the stop comes finishes within the grace period.
        with httpx.stream(
            "POST",
            f"{gateway.url}/api/v1/ai/ask_async",
            json=ask(content="[[tokens=10]] [[delay=0.1]]", project=project),
            headers=ADMIN,
            timeout=30,
        ) as stream:
            chunks = stream.iter_text()
            next(chunks)
            gateway.signal(signal.SIGTERM)
            rest = "".join(chunks)
        code = gateway.wait(30)
        load.stop()
        logs = gateway.logs()

    assert len(workers) == 2
    assert code == 0
    assert "event: done" in rest
    kept = set(stored_ids(dsn, project))
    assert set(load.finished) <= kept
    assert len(kept) == len(load.finished) + 1  # and the stream's record
    assert logs.count("Application shutdown complete") == 2
    assert "Traceback" not in logs


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def test_workers_are_refused_with_the_tinydb_store(standin: StandIn, tmp_path: Path) -> None:
    gateway = start_gateway(
        tmp_path / "data", "--ollama", standin.url, "--workers", "2", wait=False
    )
    code = gateway.wait()
    gateway.stop()

    assert code == 1
    assert "--workers 2 needs a store the workers can share" in gateway.logs()
    assert "Traceback" not in gateway.logs()
