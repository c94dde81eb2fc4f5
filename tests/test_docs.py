"""/docs and /redoc rendered in a browser, and property-based tests against the document, both
against a real gateway process (the pages as served are tested in process, test_routes_docs.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_proc import Gateway, start_gateway
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Every check that judges a response against the document, plus "invalid input is rejected".
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


@pytest.fixture(scope="module")
def probed(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own for schemathesis, which creates and revokes API keys at random."""
    data = tmp_path_factory.mktemp("schemathesis") / "data"
    with start_gateway(data, "--ollama", standin.url) as server:
        yield server


def _render(url: str) -> str:
    """The DOM after the page ran, in headless Chromium where no other host resolves."""
    assert CHROMIUM is not None
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return result.stdout


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
def test_swagger_ui_renders_offline(gateway: Gateway) -> None:
    dom = _render(gateway.url + "/docs")

    for path in (
        "/api/v1/ai/ask_sync",
        "/api/v1/ai/ask_async",
        "/api/v1/admin/dashboard",
        "/api/chat",
        "/v1/chat/completions",
    ):
        assert f'data-path="{path}"' in dom


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
def test_redoc_renders_offline(gateway: Gateway) -> None:
    dom = _render(gateway.url + "/redoc")

    assert "Ask and stream the answer (for EventSource)" in dom
    assert "The usage log, newest first" in dom


def _schemathesis(
    gateway: Gateway, location: str, *args: str, cwd: Path, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # Deterministic generation: the same cases on every run, so a failure reproduces.
    # The admin token lets it reach every operation; without it, all it would see is 401.
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            *([f"--config-file={config}"] if config else []),
            "run",
            location,
            f"--header=Authorization: Bearer {gateway.admin_token}",
            "--generation-deterministic",
            "--no-color",
            "--workers=1",
            "--request-timeout=10",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


# Ollama's model management answers 403 whatever is sent, by design: schemathesis would
# warn that those operations "failed authentication"; and the resume route below.
REFUSED = """
[[operations]]
include-path = ["/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete",
                "/api/blobs/{digest}"]
warnings = false

# A resume needs the handle of a stream kept right now, which no generated case has: 404.
[[operations]]
include-path = ["/api/v1/ai/resume"]
warnings = false
"""


# A hundred cases for each of every front's operations: about a minute on a quiet machine,
# more than the suite's two-minute default on a busy one.
@pytest.mark.timeout(360)
def test_schemathesis_finds_no_failure(probed: Gateway, tmp_path: Path) -> None:
    gateway = probed
    config = tmp_path / "schemathesis.toml"
    config.write_text(REFUSED)
    result = _schemathesis(
        gateway,
        gateway.url + "/openapi.json",
        "--max-examples=100",
        f"--checks={CHECKS}",
        cwd=tmp_path,
        config=config,
    )

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr
    # Every operation but the document's own (schemathesis leaves /openapi.json out).
    spec = httpx.get(gateway.url + "/openapi.json").json()
    operations = sum(len(methods) for methods in spec["paths"].values()) - 1
    assert f"{operations} selected / {operations} total" in result.stdout
    assert "No issues found" in result.stdout


def test_schemathesis_checks_each_sse_event(gateway: Gateway, tmp_path: Path) -> None:
    """The check above can fail on a stream: against a wrong token event, it does."""
    spec = httpx.get(gateway.url + "/openapi.json").json()
    spec["components"]["schemas"]["TokenEvent"]["required"] = ["content", "weight"]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(spec))

    result = _schemathesis(
        gateway,
        str(wrong),
        f"--url={gateway.url}",
        "--max-examples=5",
        "--include-path=/api/v1/ai/ask_async",
        "--checks=response_schema_conformance",
        "--mode=positive",
        cwd=tmp_path,
    )

    assert result.returncode == 1, result.stdout
    assert "SSE event violates schema" in result.stdout
    assert '"event":"token"' in result.stdout
