"""Running the gateway: request ids, the request log, --version, and /health."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_host import __version__
from tests.gateway_proc import ROOT, Gateway, free_port, start_gateway
from tests.helpers import ask, only_record, read_events, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


def _line_of(gateway: Gateway, request_id: str) -> str:
    """The request's log line. It is written once the response has gone, so wait for it."""
    deadline = time.monotonic() + 10
    while True:
        logs = gateway.logs()
        lines = [line for line in logs.splitlines() if f"id={request_id} " in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(lines) == 1, logs[-3000:]
    return lines[0]


def _json_lines(logs: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in logs.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/api/v1/ai/models"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/static/docs/swagger-init.js"),
        ("GET", "/no/such/route"),
        ("DELETE", "/api/v1/ai/models"),
        ("GET", "/api/v1/admin/dashboard?limit=0"),
    ],
)
def test_every_response_has_a_request_id(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path)

    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{20}", request_id)
    if response.status_code >= 400:
        assert response.json()["error"]["request_id"] == request_id


def test_request_ids_differ(client: httpx.Client) -> None:
    ids = {client.get("/health").headers["x-request-id"] for _ in range(5)}

    assert len(ids) == 5


def test_a_stream_s_request_id_is_its_record_s(client: httpx.Client) -> None:
    project = unique()

    with client.stream("POST", "/api/v1/ai/ask_async", json=ask(project=project)) as response:
        events, _ = read_events(response)

    request_id = response.headers["x-request-id"]
    assert json.loads(events[0].data)["id"] == request_id
    assert only_record(client, project)["id"] == request_id


def test_one_log_line_per_request_without_prompt_or_key(
    client: httpx.Client, gateway: Gateway
) -> None:
    secret_prompt = unique("prompt")
    secret_key = unique("key")
    body = ask(content=f"{secret_prompt} [[tokens=3]]", user_key=secret_key, project=unique())

    response = client.post("/api/v1/ai/ask_sync", json=body)

    request_id = response.headers["x-request-id"]
    line = _line_of(gateway, request_id)
    assert " method=POST path=/api/v1/ai/ask_sync status=200 " in line
    assert " model=llama3 call=ok tokens_in=2 tokens_out=3 streamed=false" in line
    assert re.search(r" seconds=[0-9.e-]+ ", line)
    assert secret_prompt not in gateway.logs()
    assert secret_key not in gateway.logs()


def test_the_log_has_the_path_but_never_the_query_string(
    client: httpx.Client, gateway: Gateway
) -> None:
    secret_prompt = unique("prompt")

    with client.stream(
        "GET", "/api/v1/ai/ask_async", params={"agent": "llama3", "content": secret_prompt}
    ) as response:
        read_events(response)

    line = _line_of(gateway, response.headers["x-request-id"])
    assert " path=/api/v1/ai/ask_async status=200 " in line
    assert " call=ok " in line
    assert " streamed=true" in line
    assert secret_prompt not in gateway.logs()


def test_a_failed_call_logs_its_error_code(client: httpx.Client, gateway: Gateway) -> None:
    response = client.post("/api/v1/ai/ask_sync", json=ask(agent="nosuchmodel"))

    line = _line_of(gateway, response.headers["x-request-id"])
    assert " status=404 " in line
    assert " call=error " in line
    assert line.endswith(" error=model_not_found")


def test_log_json_writes_one_object_per_line_and_content_only_when_asked(
    standin: StandIn, tmp_path: Path
) -> None:
    prompt = unique("prompt")
    key = unique("key")
    with (
        start_gateway(
            tmp_path / "data", "--ollama", standin.url, "--log-json", "--log-content"
        ) as gateway,
        gateway.client() as client,
    ):
        response = client.post(
            "/api/v1/ai/ask_sync", json=ask(content=f"{prompt} [[tokens=2]]", user_key=key)
        )
        _line_of(gateway, response.headers["x-request-id"])
        logs = gateway.logs()

    lines = _json_lines(logs)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    (request,) = [line for line in lines if line.get("id") == response.headers["x-request-id"]]
    assert request["method"] == "POST"
    assert request["path"] == "/api/v1/ai/ask_sync"
    assert request["status"] == 200
    assert request["model"] == "llama3"
    assert request["call"] == "ok"
    assert (request["tokens_in"], request["tokens_out"]) == (2, 2)
    assert isinstance(request["seconds"], float)
    assert request["input"] == [["user", f"{prompt} [[tokens=2]]"]]
    assert request["output"] == "w0 w1 "
    assert key not in logs


def test_version_flag() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )

    assert result.stdout.strip() == f"ollama-host {__version__}"


def test_health_says_degraded_when_ollama_is_down(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with (
        start_gateway(tmp_path / "data", "--ollama", closed) as gateway,
        gateway.client() as client,
    ):
        response = client.get("/health")

    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "degraded"
    assert health["gateway"] == "up"
    assert health["ollama"]["status"] == "down"
    assert health["ollama"]["address"] == closed
    assert health["ollama"]["error"]
    assert health["store"]["status"] == "ok"
