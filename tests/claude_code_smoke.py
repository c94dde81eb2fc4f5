"""Claude Code (`claude -p`, its print mode) asking a gateway, all inside a network namespace
that has nothing but loopback, so nothing Claude Code tries to reach (telemetry, update
checks, Anthropic's own API) can leave this machine.

Run by tests/test_claude_code.py as
`unshare -n python -m tests.claude_code_smoke CLI FOLDER standin`, or
`... CLI FOLDER llama SERVER MODEL` for llama.cpp's llama-server with a real model: it brings
loopback up, starts the upstream and a gateway with an API key, runs Claude Code's CLI
(`cli-wrapper.cjs`) under Node.js with ANTHROPIC_BASE_URL at the gateway, once with a model
the upstream has and once with one it has not, and prints one JSON object: what each run
printed, its exit code, the gateway's records and what reached the stand-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.gateway_proc import free_port, start_gateway
from tests.helpers import records
from tests.llama import MODEL, LlamaServer
from tests.ollama_standin import start_standin

PROJECT = "claude-code"
PROMPT = "Say hi. [[tokens=3]]"


@contextlib.contextmanager
def upstream(folder: Path, kind: str, binaries: list[str]) -> Iterator[tuple[str, str, Any]]:
    """The gateway's `--upstream`, the model to ask, and the stand-in (None for llama)."""
    if kind == "standin":
        with start_standin(models=["llama3"], port=free_port()) as standin:
            yield f"standin={standin.url}", "llama3", standin
        return
    server, model = map(Path, binaries)
    with LlamaServer(server, model, folder / "llama.log").start() as llama:
        llama.wait_ready()
        yield f"llama={llama.url},kind=openai", MODEL, None


def claude(cli: Path, folder: Path, gateway: str, key: str, model: str) -> dict[str, Any]:
    home = folder / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway,
        "ANTHROPIC_API_KEY": key,
        # Every model Claude Code asks for (its small one for titles, too): the one under test.
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "ANTHROPIC_CUSTOM_HEADERS": f"X-Project: {PROJECT}",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    done = subprocess.run(
        ["node", str(cli), "-p", PROMPT, "--model", model],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-4000:]}


def main(cli: Path, folder: Path, kind: str, binaries: list[str]) -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with (
        upstream(folder, kind, binaries) as (spec, model, standin),
        start_gateway(folder / "data", "--upstream", spec) as gateway,
    ):
        with gateway.client() as admin:
            key = admin.post("/api/v1/admin/keys", json={"label": "claude"}).json()["key"]
        asked = claude(cli, folder, gateway.url, key, model)
        missing = claude(cli, folder, gateway.url, key, "no-such-model")
        with gateway.client() as admin:
            found = records(admin, project=PROJECT, limit=1000)
        return {
            "asked": asked,
            "missing": missing,
            "records": found,
            "standin": standin.calls() if standin is not None else None,
            "log": gateway.logs()[-4000:],
        }


if __name__ == "__main__":
    cli, where, kind, *rest = sys.argv[1:]
    print(json.dumps(main(Path(cli), Path(where), kind, rest)))
