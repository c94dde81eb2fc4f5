"""/metrics, Server-Timing and the record's time split, in process (httpx.ASGITransport).
A real Prometheus scraping a real gateway, with one worker and with two:
tests/test_telemetry_prometheus.py."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemetry.metrics import OTHER, Models
from tests.asgi import Local, in_process
from tests.helpers import aonly_record, unique

pytestmark = pytest.mark.anyio

TIMING = re.compile(r"^(\w+);dur=(\d+\.\d{3})$")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(
        v
        for (n, have), v in samples(text).items()
        if n == name and set(labels.items()) <= set(have)
    )


def timing(response: httpx.Response) -> dict[str, float]:
    """The Server-Timing header's parts, in seconds."""
    parts: dict[str, float] = {}
    for part in response.headers["server-timing"].split(", "):
        match = TIMING.match(part)
        assert match, response.headers["server-timing"]
        parts[match[1]] = float(match[2]) / 1000
    return parts


def as_project(local: Local, project: str) -> httpx.AsyncClient:
    """The admin's client, its calls accounted to `project`."""
    client = local.client()
    client.headers["X-Project"] = project
    return client


async def scrape(local: Local) -> str:
    async with local.client() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


async def test_metrics_need_the_admin_token(local: Local) -> None:
    async with local.client(admin=False) as client:
        response = await client.get("/metrics")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_calls_are_counted_as_their_records_say(local: Local) -> None:
    project = unique("metrics")
    async with as_project(local, project) as client:
        whole = await client.post(
            "/api/chat",
            json={
                "model": "llama3",
                "stream": False,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        streamed = await client.post(
            "/api/chat", json={"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        )
        missing = await client.post(
            "/api/chat",
            json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        found = (await client.get("/api/v1/admin/dashboard", params={"project": project})).json()
    assert (whole.status_code, streamed.status_code, missing.status_code) == (200, 200, 404)
    assert len(found) == 3

    text = await scrape(local)

    ok = [r for r in found if r["status"] == "ok"]
    upstream = ok[0]["upstream"]
    assert value(
        text,
        "ollama_host_calls_total",
        front="ollama",
        gen_ai_request_model="llama3:latest",
        upstream=upstream,
        status="ok",
    ) == len(ok)
    # The model nobody has is no label of its own: callers choose model names.
    assert value(text, "ollama_host_calls_total", gen_ai_request_model=OTHER, status="error") == 1
    assert "no-such-model" not in text
    assert value(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == sum(
        r["input_tokens"] for r in ok
    )
    assert value(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == sum(
        r["output_tokens"] for r in ok
    )
    assert (
        value(text, "gen_ai_server_request_duration_seconds_count", gen_ai_operation_name="chat")
        == 3
    )
    assert value(text, "gen_ai_server_time_to_first_token_seconds_count") == 1
    assert value(text, "ollama_host_gateway_seconds_count", front="ollama") == 3
    assert value(text, "ollama_host_gateway_seconds_sum") == pytest.approx(
        sum(r["gateway_seconds"] for r in found), abs=1e-5
    )
    # In process the upstream is one server, with no router and so no queue (the real
    # gateway's router: tests/test_telemetry_prometheus.py).
    assert value(text, "ollama_host_queue_seconds_count") == 0
    assert value(text, "ollama_host_gpu_seconds_total", upstream=upstream) == pytest.approx(
        sum(r["upstream_seconds"] for r in ok)
    )
    # Gauges: sampled as the scrape came.
    assert value(text, "ollama_host_upstream_up", upstream=upstream) == 1
    assert value(text, "ollama_host_upstream_circuit", upstream=upstream, state="closed") == 1
    assert value(text, "ollama_host_open_streams", front="ollama") == 0
    assert value(text, "ollama_host_store_degraded") == 0
    # No label carries the project, nor anything else a caller writes.
    assert project not in text


async def test_every_response_says_where_its_time_went(local: Local) -> None:
    project = unique("timing")
    async with as_project(local, project) as client:
        health = await client.get("/health")
        whole = await client.post(
            "/api/chat",
            json={
                "model": "llama3",
                "stream": False,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        refused = await client.post("/api/chat", content=b"{")
        record = await aonly_record(client, project)

    assert set(timing(health)) == {"gateway"}
    assert set(timing(refused)) == {"gateway"}
    parts = timing(whole)
    assert set(parts) == {"gateway", "upstream"}  # one server in process: no queue
    assert parts["upstream"] > 0
    # The header goes out after the record: the record's split is within it.
    assert record["queue_seconds"] is None
    assert 0 < record["gateway_seconds"] <= parts["gateway"] + 0.0005
    assert (
        record["gateway_seconds"] + parts["upstream"]
        <= record["total_seconds"] + 0.001 + (parts["gateway"])
    )


async def test_a_stream_says_what_is_known_when_its_headers_go(local: Local) -> None:
    project = unique("stream-timing")
    async with as_project(local, project) as client:
        response = await client.post(
            "/api/chat",
            json={"model": "llama3", "messages": [{"role": "user", "content": "[[tokens=3]]"}]},
        )
        record = await aonly_record(client, project)

    parts = timing(response)
    assert set(parts) == {"gateway", "upstream"}
    assert record["status"] == "ok"
    assert record["gateway_seconds"] >= parts["gateway"]


async def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    async with in_process(tmp_path / "data", "--no-metrics") as local, local.client() as client:
        response = await client.get("/metrics")
        chat = await client.post(
            "/api/chat",
            json={
                "model": "llama3",
                "stream": False,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "metrics_off"
    # Server-Timing is no metric: it stays.
    assert set(timing(chat)) == {"gateway", "upstream"}


async def test_metrics_port_moves_them_off_the_main_port(tmp_path: Path) -> None:
    from tests.gateway_proc import free_port

    port = free_port()
    async with in_process(tmp_path / "data", "--metrics-port", str(port)) as local:
        async with local.client() as client:
            here = await client.get("/metrics")
        async with httpx.AsyncClient() as plain:
            there = await plain.get(f"http://127.0.0.1:{port}/metrics")
            elsewhere = await plain.get(f"http://127.0.0.1:{port}/other")

    assert here.status_code == 404
    assert f"127.0.0.1:{port}" in here.json()["error"]["message"]
    assert there.status_code == 200
    assert "ollama_host_calls_total" in there.text or "# HELP ollama_host_calls" in there.text
    assert elsewhere.status_code == 404


def test_model_labels_are_bounded() -> None:
    models = Models(limit=2)

    assert models.label("a", answered=True) == "a"
    assert models.label("b", answered=False) == OTHER  # nobody answered for it
    assert models.label("b", answered=True) == "b"
    assert models.label("c", answered=True) == OTHER  # no room left
    assert models.label("a", answered=False) == "a"
