"""Running the gateway as a process: the log it writes (--log-json) and --version.

Request ids, the request log's lines and /health are tested in process:
test_ollama_host_requestlog.py and test_routes_health.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ollama_host import __version__
from tests.gateway_proc import ROOT, Gateway, start_gateway
from tests.helpers import ask, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server


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


def test_log_json_writes_one_object_per_line_and_content_only_when_asked(
    standin: StandIn, tmp_path: Path
) -> None:
    """The log of a real process: configure_logging's writer thread and its JSON lines."""
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
    """What `python app.py --version` prints, from a real process."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )

    assert result.stdout.strip() == f"ollama-host {__version__}"
