"""A real Prometheus (Debian's) scraping a real gateway: what it stores matches the usage
records, with one worker and with two (--workers 2, prometheus_client's multiprocess mode)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import ADMIN_TOKEN, Gateway, start_gateway
from tests.helpers import unique
from tests.ollama_standin import StandIn
from tests.prometheus import Prometheus, prometheus

pytestmark = pytest.mark.server

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def chat(url: str, project: str, content: str, *, stream: bool, model: str = "llama3") -> int:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}
    # A connection each: with --workers 2 the kernel hands them to either worker.
    headers = {**ADMIN, "X-Project": project, "Connection": "close"}
    response = httpx.post(f"{url}/api/chat", json=body, headers=headers, timeout=30)
    return response.status_code


def records(gateway: Gateway, project: str) -> list[dict[str, Any]]:
    with gateway.client() as client:
        found: list[dict[str, Any]] = client.get(
            "/api/v1/admin/dashboard", params={"project": project, "limit": 1000}
        ).json()
    return found


def total(server: Prometheus, expression: str) -> float:
    return server.scalar(f"sum({expression})") or 0.0


def matches_records(server: Prometheus, found: list[dict[str, Any]]) -> None:
    """What Prometheus has stored, against the records (it has them once it counts them all)."""
    server.eventually(
        lambda: total(server, "ollama_host_calls_total") == len(found),
        f"prometheus counts {len(found)} calls",
    )
    ok = [r for r in found if r["status"] == "ok"]
    by = server.query("sum by (status) (ollama_host_calls_total)")
    counted = {s["metric"]["status"]: float(s["value"][1]) for s in by}
    expected: dict[str, float] = {}
    for record in found:
        expected[record["status"]] = expected.get(record["status"], 0) + 1
    assert counted == expected
    tokens_in = total(server, 'gen_ai_client_token_usage_sum{gen_ai_token_type="input"}')
    tokens_out = total(server, 'gen_ai_client_token_usage_sum{gen_ai_token_type="output"}')
    assert tokens_in == sum(r["input_tokens"] for r in ok)
    assert tokens_out == sum(r["output_tokens"] for r in ok)
    assert total(server, "ollama_host_gateway_seconds_count") == len(found)
    assert total(server, "ollama_host_gateway_seconds_sum") == pytest.approx(
        sum(r["gateway_seconds"] for r in found), abs=1e-4
    )
    queued = [r for r in found if r["queue_seconds"] is not None]
    assert total(server, "ollama_host_queue_seconds_sum") == pytest.approx(
        sum(r["queue_seconds"] for r in queued), abs=1e-4
    )
    assert total(server, "gen_ai_server_time_to_first_token_seconds_count") == sum(
        1 for r in ok if r["streamed"]
    )


def test_prometheus_counts_what_the_records_say(standin: StandIn, tmp_path: Path) -> None:
    project = unique("prom")
    # One call at a time upstream, so a second call at once waits in the gateway's queue.
    gateway = start_gateway(
        tmp_path / "data", "--upstream", f"one={standin.url},cap=1", "--log-level", "warning"
    )
    with (
        gateway,
        prometheus(tmp_path / "prom", f"127.0.0.1:{gateway.port}", token=ADMIN_TOKEN) as server,
    ):
        server.eventually(server.targets_up, "prometheus scrapes the gateway with the token")
        slow = threading.Thread(
            target=chat,
            args=(gateway.url, project, "[[tokens=10]] [[delay=0.3]]"),
            kwargs={"stream": True},
        )
        slow.start()
        # The slow stream holds the one slot: this one waits for it.
        server.eventually(lambda: _open_streams(gateway) == 1, "the stream is open")
        statuses = [chat(gateway.url, project, "hi", stream=False)]
        slow.join()
        statuses += [chat(gateway.url, project, "[[tokens=3]]", stream=True) for _ in range(3)]
        statuses += [chat(gateway.url, project, "hi", stream=False) for _ in range(4)]
        statuses.append(chat(gateway.url, project, "hi", stream=False, model="nobody-has-it"))
        found = records(gateway, project)
        assert sorted(statuses) == [200] * 8 + [404]
        assert len(found) == 10

        matches_records(server, found)

        waited = [r for r in found if (r["queue_seconds"] or 0) > 0.1]
        assert len(waited) == 1  # the call that waited for the stream's slot
        quick = [r for r in found if r["queue_seconds"] is not None and r["queue_seconds"] <= 0.1]
        assert total(server, 'ollama_host_queue_seconds_bucket{le="0.1"}') == len(quick) == 9
        assert server.scalar('ollama_host_upstream_up{upstream="one"}') == 1
        assert server.scalar('ollama_host_upstream_circuit{upstream="one",state="closed"}') == 1
        assert total(server, "ollama_host_open_streams") == 0
        # No series names the project, nor the model nobody has.
        everything = httpx.get(
            f"{server.url}/api/v1/label/gen_ai_request_model/values", timeout=10
        ).json()["data"]
        assert set(everything) == {"llama3:latest", "other"}
        assert not server.query(f'{{__name__=~".+", project="{project}"}}')


@pytest.mark.postgres
def test_with_two_workers_the_numbers_are_the_whole_gateways(
    standin: StandIn, tmp_path: Path, dsn: str
) -> None:
    project = unique("prom-workers")
    gateway = start_gateway(
        tmp_path / "data", "--ollama", standin.url, "--store", dsn, "--workers", "2",
        "--log-level", "warning",
    )  # fmt: skip
    with (
        gateway,
        prometheus(tmp_path / "prom", f"127.0.0.1:{gateway.port}", token=ADMIN_TOKEN) as server,
    ):
        server.eventually(server.targets_up, "prometheus scrapes the gateway")
        workers = _children(gateway.proc.pid)
        statuses = [chat(gateway.url, project, "hi", stream=i % 2 == 0) for i in range(40)]
        found = records(gateway, project)
        folder = _multiproc_dir(workers[0])
        counted_by = {p.stem.rsplit("_", 1)[1] for p in folder.glob("counter_*.db")}

        assert statuses == [200] * 40
        assert len(found) == 40
        # Both workers counted calls; every scrape, by either, adds both up.
        assert counted_by == {str(pid) for pid in workers}
        matches_records(server, found)
        for _ in range(4):
            scraped = httpx.get(f"{gateway.url}/metrics", headers={**ADMIN, "Connection": "close"})
            assert (
                'ollama_host_calls_total{front="ollama",gen_ai_request_model="llama3:latest"'
                in scraped.text
            )
            line = next(
                line
                for line in scraped.text.splitlines()
                if line.startswith("ollama_host_calls_total{") and 'status="ok"' in line
            )
            assert float(line.rsplit(" ", 1)[1]) == 40
        logs = gateway.logs()

    assert "Traceback" not in logs
    assert not folder.exists()  # the workers' numbers go with the gateway


def _open_streams(gateway: Gateway) -> float:
    text = httpx.get(f"{gateway.url}/metrics", headers=ADMIN, timeout=10).text
    lines = [line for line in text.splitlines() if line.startswith("ollama_host_open_streams{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def _multiproc_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("the worker has no PROMETHEUS_MULTIPROC_DIR")
