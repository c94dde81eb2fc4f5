"""Clients of Ollama's API nobody tuned the gateway for, unchanged, against models of an
OpenAI-kind upstream behind the Ollama front: the OpenAI stand-in, and llama.cpp's
llama-server with a real model.

- The Vercel AI SDK's Ollama provider (`ai` + `ollama-ai-provider-v2`, under Node.js)
  validates every answer: `embed()` failed with "Invalid JSON response" while the gateway
  left out `total_duration` and `load_duration`, and a completion without `context`.
- LiteLLM's `ollama/` provider sends `"images": []` with every /api/generate, which was
  refused with 400. LiteLLM runs in a loopback-only network namespace (tests/litellm_smoke.py).
- `llm` with `llm-ollama` lists the models, asks, and reports the usage.

Each call leaves its record, with the front and the endpoint it came by.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_proc import ROOT, Gateway, free_port, start_gateway
from tests.helpers import records
from tests.llama import MODEL, LlamaServer, binaries
from tests.openai_standin import start_openai_standin
from tests.real_clients import litellm_python, loopback_only, vercel_ai

pytestmark = pytest.mark.server

BIN = Path(sys.executable).parent
SCRIPT = Path(__file__).with_name("vercel_ai_smoke.mjs")


class Keyed:
    """A gateway in front of one OpenAI-kind upstream, and an API key for it."""

    def __init__(self, gateway: Gateway, key: str) -> None:
        self.gateway = gateway
        self.key = key

    def records(self, project: str) -> list[dict[str, Any]]:
        with self.gateway.client() as admin:
            return records(admin, project=project)


@pytest.fixture(scope="module")
def standin_kind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    folder = tmp_path_factory.mktemp("clients-ollama-front")
    with (
        start_openai_standin(port=free_port(), models=[MODEL]) as standin,
        start_gateway(folder / "data", "--upstream", f"standin={standin.url}/v1,kind=openai") as gw,
    ):
        with gw.client() as admin:
            key = admin.post("/api/v1/admin/keys", json={"label": "clients"}).json()["key"]
        yield Keyed(gw, key)


@pytest.fixture(scope="module")
def llama_kind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    folder = tmp_path_factory.mktemp("clients-llama")
    server, model = binaries()
    with LlamaServer(server, model, folder / "llama.log", embeddings=True).start() as llama:
        llama.wait_ready()
        with start_gateway(folder / "data", "--upstream", f"llama={llama.url},kind=openai") as gw:
            with gw.client() as admin:
                key = admin.post("/api/v1/admin/keys", json={"label": "clients"}).json()["key"]
            yield Keyed(gw, key)


# -- the Vercel AI SDK -------------------------------------------------------------------------


def check_vercel_ai(keyed: Keyed, project: str, *, real: bool) -> None:
    ai, provider = vercel_ai()
    done = subprocess.run(
        ["node", str(SCRIPT)],
        env={
            **os.environ,
            "AI": ai.as_uri(),
            "PROVIDER": provider.as_uri(),
            "GATEWAY": keyed.gateway.url,
            "KEY": keyed.key,
            "PROJECT": project,
            "MODEL": MODEL,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [name for name, got in seen.items() if "error" in got], seen
    # The stand-in's vectors have 2 numbers, SmolLM2's 576.
    length = 576 if real else 2
    assert seen["embed"]["length"] == length, seen
    assert seen["embed"]["usage"]["tokens"] > 0
    assert (seen["embedMany"]["count"], seen["embedMany"]["length"]) == (2, length)
    for name in ("chat", "chat streamed", "completion"):
        assert seen[name]["text"], (name, seen)
        assert seen[name]["usage"]["outputTokens"] > 0, (name, seen)
        assert seen[name]["finishReason"] in ("stop", "length"), (name, seen)
    found = sorted((r["endpoint"], r["status"]) for r in keyed.records(project))
    assert found == [
        ("/api/chat", "ok"),
        ("/api/chat", "ok"),
        ("/api/embed", "ok"),
        ("/api/embed", "ok"),
        ("/api/generate", "ok"),
    ]


def test_the_vercel_ai_sdk_ollama_provider_works_unchanged(standin_kind: Keyed) -> None:
    check_vercel_ai(standin_kind, "vercel-standin", real=False)


@pytest.mark.model
def test_the_vercel_ai_sdk_ollama_provider_works_with_llama_server(llama_kind: Keyed) -> None:
    check_vercel_ai(llama_kind, "vercel-llama", real=True)


# -- LiteLLM, in a loopback-only network namespace ----------------------------------------------


def check_litellm(folder: Path, *args: str) -> None:
    python = litellm_python()
    smoke = [sys.executable, "-m", "tests.litellm_smoke", str(python), str(folder), *args]
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
    assert result["returncode"] == 0, result["stderr"]
    # LiteLLM prints a banner to stdout along with any error: the answer is the last line.
    seen: dict[str, Any] = json.loads(result["stdout"].strip().splitlines()[-1])
    assert not [name for name, got in seen.items() if "error" in got], seen
    for name in ("generate", "generate streamed", "chat", "chat streamed"):
        assert seen[name]["text"], (name, seen)
    # Its usage is the gateway's counts: the prompt's tokens, and at least one generated.
    for name in ("generate", "chat"):
        prompt, generated = seen[name]["usage"]
        assert prompt > 0, (name, seen)
        assert generated > 0, (name, seen)
    assert (seen["embed"]["count"], seen["embed"]["tokens"] > 0) == (2, True), seen
    found = sorted((r["endpoint"], r["status"], r["front"]) for r in result["records"])
    assert found == [
        ("/api/chat", "ok", "ollama"),
        ("/api/chat", "ok", "ollama"),
        ("/api/embed", "ok", "ollama"),
        ("/api/generate", "ok", "ollama"),
        ("/api/generate", "ok", "ollama"),
    ], result["log"]


def test_litellms_ollama_providers_work_unchanged(tmp_path: Path) -> None:
    check_litellm(tmp_path, "standin")


@pytest.mark.model
def test_litellms_ollama_providers_work_with_llama_server(tmp_path: Path) -> None:
    server, model = binaries()
    check_litellm(tmp_path, "llama", str(server), str(model))


# -- llm with llm-ollama -----------------------------------------------------------------------


def check_llm(keyed: Keyed, tmp_path: Path, project: str) -> None:
    """`llm -m ollama/smollm2` streamed and whole, with its usage (which llm-ollama reads from
    the last line's prompt_eval_count and eval_count)."""
    # llm sends no headers of its own: the key's project labels its calls.
    with keyed.gateway.client() as admin:
        made = admin.post("/api/v1/admin/keys", json={"label": "llm", "project": project})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA", "LLM_"))},
        "OLLAMA_HOST": keyed.gateway.url,
        "OLLAMA_API_KEY": made.json()["key"],
        "LLM_USER_PATH": str(tmp_path / "llm"),
    }
    for extra in ([], ["--no-stream"]):
        ask = ["-m", f"ollama/{MODEL}", "-u", "-o", "num_predict", "8", *extra]
        done = subprocess.run(
            [str(BIN / "llm"), *ask, f"{project} Say hi."],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stdout.strip(), done
        assert "Token usage:" in done.stderr, done.stderr
    found = [(r["endpoint"], r["status"], r["streamed"]) for r in keyed.records(project)]
    assert sorted(found) == [("/api/chat", "ok", False), ("/api/chat", "ok", True)]


def test_llm_with_llm_ollama_asks_unchanged(standin_kind: Keyed, tmp_path: Path) -> None:
    check_llm(standin_kind, tmp_path, "llm-standin")


@pytest.mark.model
def test_llm_with_llm_ollama_asks_llama_server(llama_kind: Keyed, tmp_path: Path) -> None:
    check_llm(llama_kind, tmp_path, "llm-llama")
