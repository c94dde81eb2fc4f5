"""Two gateways behind nginx sharing Redis (and their keys, in PostgreSQL) before one Ollama
stand-in with cap=2: the cap holds across both, read from the stand-in's own count of the
requests it served at once; the fair order holds across both; and a gateway killed with
slots held gives them back by itself within a few seconds, the cap held meanwhile."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from queueing.shared import LEASE_SECONDS
from tests import pg, redis_server
from tests.gateway_proc import ADMIN_TOKEN, Gateway, start_gateway
from tests.helpers import ask, unique
from tests.nginx import nginx
from tests.ollama_standin import StandIn, start_standin

pytestmark = [pytest.mark.server, pytest.mark.redis, pytest.mark.postgres]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextlib.contextmanager
def cluster(folder: Path) -> Iterator[tuple[StandIn, Gateway, Gateway, str]]:
    redis_server.require()
    with pg.database() as dsn, start_standin() as box:
        args = ["--upstream", f"box={box.url},cap=2", "--store", dsn, "--redis", redis_server.URL]
        with (
            start_gateway(folder / "a" / "data", *args) as a,
            start_gateway(folder / "b" / "data", *args) as b,
            nginx(folder / "nginx", [a.port, b.port]) as url,
        ):
            yield box, a, b, url


def key(url: str, label: str, priority: str) -> str:
    made = httpx.post(
        f"{url}/api/v1/admin/keys", json={"label": label, "priority": priority}, headers=ADMIN
    )
    assert made.status_code == 201, made.text
    secret: str = made.json()["key"]
    return secret


def asking(url: str, secret: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}", "Accept": "application/json"}
    return httpx.post(f"{url}/api/v1/ai/ask_sync", json=body, headers=headers, timeout=120)


def record(url: str, project: str) -> dict[str, Any]:
    found = httpx.get(
        f"{url}/api/v1/admin/dashboard", params={"project": project}, headers=ADMIN
    ).json()
    assert len(found) == 1, found
    row: dict[str, Any] = found[0]
    return row


def waiting(url: str) -> int:
    view = httpx.get(f"{url}/api/v1/admin/queue", headers=ADMIN).json()
    return sum(len(line["waiting"]) for line in view["queues"])


def test_100_calls_through_two_gateways_never_exceed_the_cap_and_stay_fair(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path) as (box, a, b, url):
        batch, chat = key(url, "batch", "batch"), key(url, "chat", "interactive")
        box.reset()
        project = unique("flood")
        slow = ask(content="[[tokens=4]] [[delay=0.03]]", project=project)
        with ThreadPoolExecutor(101) as pool:
            flood = [pool.submit(asking, url, batch, slow) for _ in range(100)]
            deadline = time.monotonic() + 30
            while waiting(a.url) < 60:
                assert time.monotonic() < deadline, "the calls did not queue"
                time.sleep(0.05)
            asked = unique("chat")
            began = time.monotonic()
            answer = pool.submit(asking, url, chat, ask(content="hi", project=asked)).result()
            chat_seconds = time.monotonic() - began
            left_behind = waiting(b.url)
            assert all(f.result().status_code == 200 for f in flood)

        assert answer.status_code == 200
        # The stand-in's own count: never more than 2 requests at once, from both gateways.
        assert box.peak_streams() == 2
        # The interactive call waited for a slot to free (calls take ~0.1 s), not for the
        # batch calls queued before it, dozens of which were still waiting after it.
        assert record(url, asked)["queue_seconds"] < 1.0
        assert chat_seconds < 2.0
        assert left_behind >= 20
        health = httpx.get(f"{a.url}/health").json()
        assert health["upstreams"][0]["shared"] == f"redis at {redis_server.URL}"


def test_a_gateway_killed_holding_slots_gives_them_back_within_seconds(tmp_path: Path) -> None:
    with cluster(tmp_path) as (box, a, b, _url):
        long = ask(content="[[tokens=200]] [[delay=0.1]]")
        with ThreadPoolExecutor(2) as pool:
            held = [
                pool.submit(
                    httpx.post, f"{a.url}/api/v1/ai/ask_sync", json=long, headers=ADMIN, timeout=60
                )
                for _ in range(2)
            ]
            deadline = time.monotonic() + 20
            while box.open_streams() < 2:
                assert time.monotonic() < deadline, "gateway a did not take both slots"
                time.sleep(0.05)
            box.reset()
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            began = time.monotonic()
            response = httpx.post(
                f"{b.url}/api/v1/ai/ask_sync", json=ask(content="after"), headers=ADMIN, timeout=30
            )
            waited = time.monotonic() - began
            for future in held:
                with contextlib.suppress(httpx.HTTPError):
                    future.result()

        assert response.status_code == 200
        # Its leases expired (LEASE_SECONDS) and gateway b used the slots again.
        assert waited <= LEASE_SECONDS + 3
        assert box.peak_streams() <= 2
