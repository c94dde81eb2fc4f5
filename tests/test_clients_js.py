"""The `ollama` npm package, unchanged, under the machine's Node.js: a smoke test.

The package is installed once into a cache folder (`.cache/` in the checkout); without npm
the test skips, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_proc import ROOT, Gateway, start_gateway
from tests.helpers import calls_with, records, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server

PACKAGE = "ollama@0.6.4"
CACHE = ROOT / ".cache" / "npm" / PACKAGE.replace("@", "-")
SCRIPT = Path(__file__).with_name("ollama_js_smoke.mjs")


def _package() -> Path:
    """The package's entry point, installed from the npm registry if it is not cached yet."""
    entry = CACHE / "node_modules" / "ollama" / "dist" / "index.mjs"
    if entry.is_file():
        return entry
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Node.js and npm for the ollama npm smoke test")
        pytest.skip("no Node.js/npm on this machine")
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "--silent", PACKAGE],
        check=True,
        timeout=300,
    )
    assert entry.is_file(), f"npm installed no {entry}"
    return entry


@pytest.fixture(scope="module")
def keyed(
    standin: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, str]]:
    data = tmp_path_factory.mktemp("clients-js") / "data"
    with start_gateway(data, "--ollama", standin.url) as server:
        with server.client() as admin:
            key = admin.post("/api/v1/admin/keys", json={"label": "js"}).json()["key"]
        yield server, key


def test_the_ollama_npm_package_works_unchanged(
    keyed: tuple[Gateway, str], standin: StandIn
) -> None:
    gateway, key = keyed
    entry = _package()
    project = unique("js")

    result = subprocess.run(
        ["node", str(SCRIPT)],
        env={
            **os.environ,
            "OLLAMA_JS": entry.as_uri(),
            "GATEWAY": gateway.url,
            "KEY": key,
            "PROJECT": project,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert json.loads(seen["whole"]["content"]) == {"city": "w0", "sunny": True}
    assert seen["whole"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "w0"},
    }
    streamed = seen["streamed"]
    assert "".join(p["content"] for p in streamed) == "w0 w1 w2 "
    assert any(p["tool_calls"] for p in streamed)
    assert [p["done"] for p in streamed][-1] is True
    assert seen["generate"] == "w0 w1 "
    assert seen["embed"] == [8, 8]
    assert "llama3:latest" in seen["list"]
    assert seen["show"] == "llama"
    assert "llama3:latest" in seen["ps"]
    assert seen["version"] == "0.12.0"
    assert (seen["missing"]["name"], seen["missing"]["status"]) == ("ResponseError", 404)
    assert (seen["unauthorized"]["name"], seen["unauthorized"]["status"]) == ("ResponseError", 401)
    assert seen["aborted"]["name"] == "AbortError"
    assert seen["first"] == "w0 "
    marker = f"{project} left"
    calls = standin.wait_for(
        lambda calls: all(c["disconnected"] for c in calls_with(calls, marker))
    )
    assert not calls_with(calls, marker)[0]["finished"]
    with gateway.client() as admin:
        deadline = time.monotonic() + 15
        while len(found := records(admin, project=project)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    by_endpoint = sorted((r["endpoint"], r["status"]) for r in found)
    assert by_endpoint == [
        ("/api/chat", "cancelled"),
        ("/api/chat", "error"),
        ("/api/chat", "ok"),
        ("/api/chat", "ok"),
        ("/api/embed", "ok"),
        ("/api/generate", "ok"),
    ]
    assert {(r["front"], r["key_label"]) for r in found} == {("ollama", "js")}
