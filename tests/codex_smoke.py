"""OpenAI's Codex (`codex exec`) asking a gateway in front of the Ollama stand-in through the
Responses front, all inside a network namespace that has nothing but loopback, so nothing
Codex tries to reach (its telemetry, update checks, OpenAI itself) can leave this machine.

Run by tests/test_clients_responses.py as
`unshare -n python -m tests.codex_smoke CODEX_JS FOLDER`: it brings loopback up, starts the
stand-in and a gateway with an API key, writes a Codex home whose provider is the gateway
(`wire_api = "responses"`), runs `codex exec`, and prints one JSON object: Codex's output and
exit code, the gateway's records, and what reached the stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.gateway_proc import start_gateway
from tests.helpers import records
from tests.ollama_standin import start_standin

PROJECT = "codex"
MODEL = "llama3"
PROMPT = "Say hi. [[tokens=3]]"


def config(gateway_url: str) -> str:
    """A Codex home's config.toml: the gateway as the only provider, nothing else on."""
    return f"""\
model = "{MODEL}"
model_provider = "gw"
approval_policy = "never"
sandbox_mode = "read-only"
# Tools the upstream cannot run, which the gateway refuses (400, `param` names the tool):
# OpenAI's hosted web search, and the sub-agent tools Codex sends as a `namespace`.
web_search = "disabled"

[agents]
enabled = false

[model_providers.gw]
name = "gateway"
base_url = "{gateway_url}/v1"
wire_api = "responses"
env_key = "GW_KEY"
http_headers = {{ "X-Project" = "{PROJECT}" }}
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[otel]
exporter = "none"
log_user_prompt = false
"""


def main(codex: Path, folder: Path) -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    home = folder / "codex-home"
    home.mkdir(parents=True, exist_ok=True)
    with start_standin() as standin, start_gateway(folder / "data", "--ollama", standin.url) as gw:
        with gw.client() as admin:
            key = admin.post("/api/v1/admin/keys", json={"label": "codex"}).json()["key"]
        (home / "config.toml").write_text(config(gw.url))
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(folder),
            "CODEX_HOME": str(home),
            "GW_KEY": key,
            "NO_COLOR": "1",
        }
        done = subprocess.run(
            ["node", str(codex), "exec", "--skip-git-repo-check", PROMPT],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        with gw.client() as admin:
            found = records(admin, project=PROJECT)
        return {
            "returncode": done.returncode,
            "stdout": done.stdout[-4000:],
            "stderr": done.stderr[-4000:],
            "records": found,
            "upstream": standin.calls(),
            "log": gw.logs()[-6000:],
        }


if __name__ == "__main__":
    codex_js, where = sys.argv[1:]
    print(json.dumps(main(Path(codex_js), Path(where))))
