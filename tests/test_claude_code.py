"""Claude Code (the npm package `@anthropic-ai/claude-code`), unchanged, in print mode
(`claude -p`) with ANTHROPIC_BASE_URL at a gateway in front of the Ollama stand-in.

It runs only inside a network namespace that has nothing but loopback (`unshare -n`, lo
brought up), with its telemetry, error reports and update checks switched off, so nothing
leaves the machine (tests/claude_code_smoke.py). Without npm, the registry or `unshare -n`
(root) the test skips, except in CI (CI=true), where it fails.

Not run against the real model: Claude Code's system prompt and tool list are longer than
the 2,048-token context SmolLM2 is served with here (tests/llama.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_proc import ROOT
from tests.real_clients import CLAUDE_CODE, loopback_only, npm_package

pytestmark = pytest.mark.server


def test_claude_code_asks_through_the_gateway_and_is_recorded(tmp_path: Path) -> None:
    cli = npm_package(CLAUDE_CODE, "@anthropic-ai/claude-code/cli-wrapper.cjs")
    smoke = [sys.executable, "-m", "tests.claude_code_smoke", str(cli), str(tmp_path), "standin"]

    done = subprocess.run(
        [*loopback_only(), *smoke],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    asked, missing = result["asked"], result["missing"]
    assert asked["returncode"] == 0, asked
    assert asked["stdout"].strip() == "w0 w1 w2"
    assert missing["returncode"] != 0
    assert "There's an issue with the selected model (no-such-model)" in missing["stdout"]
    found = sorted(
        (r["model_name"], r["status"], r["front"], r["endpoint"], r["key_label"])
        for r in result["records"]
    )
    # Claude Code asks a missing model twice (streamed, then whole) before it gives up.
    assert found[0] == ("llama3", "ok", "anthropic", "/v1/messages", "claude")
    assert {f[:2] for f in found[1:]} == {("no-such-model", "error")}
    [ok] = [r for r in result["records"] if r["status"] == "ok"]
    assert ok["streamed"] is True
    assert ok["output"] == "w0 w1 w2 "
    [call] = [c for c in result["standin"] if c["body"]["model"] == "llama3"]
    sent = call["body"]
    # It declares its tools; its instructions arrive as system messages, the first one from
    # `system`, others from system messages among the turns.
    assert len(sent["tools"]) > 3
    roles = [m["role"] for m in sent["messages"]]
    assert roles[0] == "system"
    assert roles.count("system") > 1
    [prompt] = [m["content"] for m in sent["messages"] if m["role"] == "user"]
    assert "Say hi. [[tokens=3]]" in prompt
