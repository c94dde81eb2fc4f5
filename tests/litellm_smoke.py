"""LiteLLM asking a gateway in front of an OpenAI-kind upstream, all inside a network namespace
that has nothing but loopback, so nothing LiteLLM tries to fetch can leave this machine.

Run by tests/test_clients_ollama_front.py as
`unshare -n python -m tests.litellm_smoke LITELLM_PYTHON FOLDER standin`, or
`... FOLDER llama SERVER MODEL` for llama.cpp's llama-server with a real model: it brings
loopback up, starts the upstream and a gateway with an API key, runs tests/litellm_client.py
with LiteLLM's interpreter, and prints one JSON object: what the client printed, its exit
code and errors, and the gateway's records.
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

from tests.gateway_proc import ROOT, free_port, start_gateway
from tests.helpers import records
from tests.llama import MODEL, LlamaServer
from tests.openai_standin import start_openai_standin

PROJECT = "litellm"


@contextlib.contextmanager
def upstream(folder: Path, kind: str, binaries: list[str]) -> Iterator[str]:
    """The `--upstream` of the gateway: the OpenAI stand-in, or llama-server."""
    if kind == "standin":
        with start_openai_standin(port=free_port(), models=[MODEL]) as standin:
            yield f"standin={standin.url}/v1,kind=openai"
        return
    server, model = map(Path, binaries)
    with LlamaServer(server, model, folder / "llama.log", embeddings=True).start() as llama:
        llama.wait_ready()
        yield f"llama={llama.url},kind=openai"


def main(python: Path, folder: Path, kind: str, binaries: list[str]) -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with (
        upstream(folder, kind, binaries) as spec,
        start_gateway(folder / "data", "--upstream", spec) as gateway,
    ):
        with gateway.client() as admin:
            key = admin.post("/api/v1/admin/keys", json={"label": "litellm"}).json()["key"]
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(folder),
            "GATEWAY": gateway.url,
            "KEY": key,
            "PROJECT": PROJECT,
            "MODEL": MODEL,
        }
        done = subprocess.run(
            [str(python), str(ROOT / "tests" / "litellm_client.py")],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        with gateway.client() as admin:
            found = records(admin, project=PROJECT)
        return {
            "returncode": done.returncode,
            "stdout": done.stdout,
            "stderr": done.stderr[-4000:],
            "records": found,
            "log": gateway.logs()[-4000:],
        }


if __name__ == "__main__":
    python, where, kind, *rest = sys.argv[1:]
    print(json.dumps(main(Path(python), Path(where), kind, rest)))
