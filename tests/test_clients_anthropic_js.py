"""The `@anthropic-ai/sdk` npm package, unchanged, under the machine's Node.js, against a real
gateway in front of the stand-in: messages whole and streamed, tools with a tool_result turn,
thinking, an image, count_tokens, and its own error classes.

The package is installed once into `.cache/` (tests/real_clients.py); without npm or the
registry the test skips, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_proc import start_gateway
from tests.helpers import records, unique
from tests.ollama_standin import StandIn
from tests.real_clients import ANTHROPIC_JS, npm_package

pytestmark = pytest.mark.server

SCRIPT = Path(__file__).with_name("anthropic_js_smoke.mjs")


def test_the_anthropic_npm_sdk_works_unchanged(standin: StandIn, tmp_path: Path) -> None:
    entry = npm_package(ANTHROPIC_JS, "@anthropic-ai/sdk/index.mjs")
    project = unique("an-js")
    with start_gateway(tmp_path / "data", "--ollama", standin.url) as gateway:
        with gateway.client() as admin:
            key = admin.post("/api/v1/admin/keys", json={"label": "js"}).json()["key"]
            limited = admin.post(
                "/api/v1/admin/keys", json={"label": "js", "limits": {"rpm": 1}}
            ).json()["key"]
        result = subprocess.run(
            ["node", str(SCRIPT)],
            env={
                **os.environ,
                "ANTHROPIC_JS": entry.as_uri(),
                "GATEWAY": gateway.url,
                "KEY": key,
                "LIMITED": limited,
                "PROJECT": project,
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        with gateway.client() as admin:
            deadline = time.monotonic() + 15
            while len(found := records(admin, project=project)) < 9:
                assert time.monotonic() < deadline, found
                time.sleep(0.05)
    assert "Traceback" not in gateway.logs(), gateway.logs()

    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["whole"]["content"] == [{"type": "text", "text": "w0 w1 w2 "}]
    assert seen["whole"]["stop_reason"] == "end_turn"
    assert seen["whole"]["usage"]["input_tokens"] == 5
    assert seen["whole"]["usage"]["output_tokens"] == 3
    assert seen["streamed"]["texts"] == ["w0 ", "w1 ", "w2 ", "w3 "]
    assert seen["streamed"]["usage"]["input_tokens"] == 3
    assert seen["streamed"]["usage"]["output_tokens"] == 4
    assert seen["tools"]["use"] == {"name": "get_weather", "input": {"city": "w0"}}
    assert seen["tools"]["stop_reason"] == "tool_use"
    assert seen["tools"]["answer"] == [{"type": "text", "text": "w0 w1 "}]
    assert seen["thinking"] == ["thinking", "text"]
    assert seen["image"] == "w0 "
    assert seen["count"] == 3
    # The stand-in's models, one page each, and one model by its name.
    assert seen["models"] == [
        "llama3:latest",
        "qwen:latest",
        "mistral:latest",
        "custom-model:latest",
    ]
    assert seen["model"] == {"id": "llama3", "type": "model", "display_name": "llama3"}
    assert seen["noModel"] == {"name": "NotFoundError", "status": 404, "type": "not_found_error"}
    assert seen["missing"] == {"name": "NotFoundError", "status": 404, "type": "not_found_error"}
    assert seen["unauthorized"] == {
        "name": "AuthenticationError",
        "status": 401,
        "type": "authentication_error",
    }
    assert seen["limited"] == {"name": "RateLimitError", "status": 429, "type": "rate_limit_error"}
    by_endpoint = sorted((r["endpoint"], r["status"]) for r in found)
    assert by_endpoint == [
        ("/v1/messages", "error"),
        *[("/v1/messages", "ok")] * 7,
        ("/v1/messages/count_tokens", "ok"),
    ]
    assert {(r["front"], r["key_label"]) for r in found} == {("anthropic", "js")}
