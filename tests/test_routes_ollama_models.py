"""routes/ollama/models.py: every model the Ollama front lists carries every field Ollama's
own answer has, whatever the upstream's kind, as the real clients read them: the `ollama`
library's own types, and `llm` with its `llm-ollama` plugin (which reads every model's digest
and capabilities, and crashed with KeyError 'digest' on a model of an OpenAI-kind upstream).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from calls.types import LoadedModel, ModelInfo
from routes.ollama.models import ZERO_TIME, digest, listed, running, shown
from tests.gateway_proc import Gateway, free_port, start_gateway
from tests.llama import LlamaServer, binaries
from tests.ollama_standin import start_standin
from tests.openai_standin import start_openai_standin

BIN = Path(sys.executable).parent
LISTED = {"name", "model", "modified_at", "size", "digest", "details"}
RUNNING = {"name", "model", "size", "digest", "details", "expires_at", "size_vram"}
DETAILS = {"parent_model", "format", "family", "families", "parameter_size"}


# -- rendering, in process ---------------------------------------------------------------------


def test_a_model_known_only_by_name_has_every_field() -> None:
    model = ModelInfo(name="smollm2")

    entry, loaded, described = listed(model), running(LoadedModel(name="smollm2")), shown(model)

    assert (entry.size, entry.modified_at, entry.details.format) == (0, ZERO_TIME, "")
    assert len(entry.digest) == 64
    assert loaded.digest == entry.digest
    assert loaded.expires_at > "2300"  # kept loaded: Ollama's far future
    assert (described.capabilities, described.model_info) == (["completion"], {})


def test_what_the_upstream_says_goes_as_it_said_it() -> None:
    model = ModelInfo(
        name="llama3:latest",
        family="llama",
        parameter_size="8.0B",
        quantization="Q4_0",
        size=4_661_224_676,
        digest="365c0bd3c000",
        modified_at="2026-01-02T03:04:05Z",
    )

    entry = listed(model)

    assert (entry.digest, entry.size, entry.modified_at) == (
        "365c0bd3c000",
        4_661_224_676,
        "2026-01-02T03:04:05Z",
    )
    assert (entry.details.family, entry.details.families) == ("llama", ["llama"])
    assert (entry.details.parameter_size, entry.details.quantization_level) == ("8.0B", "Q4_0")


def test_a_derived_digest_changes_with_the_weights() -> None:
    first = digest(ModelInfo(name="m", size=1, quantization="Q4_0"))

    assert first == digest(ModelInfo(name="m", size=1, quantization="Q4_0"))
    assert first != digest(ModelInfo(name="m", size=2, quantization="Q4_0"))


# -- the real clients, against a gateway with an OpenAI-kind upstream ----------------------------


def check_the_ollama_library(client: ollama.Client, http: httpx.Client, openai_model: str) -> None:
    models = client.list().models
    names = [m.model for m in models]
    assert openai_model in names, names
    for model in models:
        assert all(getattr(model, f) is not None for f in ("model", "modified_at", "size")), model
        assert model.digest, model
        assert model.details is not None
        assert all(getattr(model.details, f) is not None for f in DETAILS - {"families"}), model
    raw = http.get("/api/tags").json()["models"]
    assert all(set(m) >= LISTED and set(m["details"]) >= DETAILS for m in raw), raw
    described = client.show(openai_model)
    assert described.capabilities is not None
    assert "completion" in described.capabilities
    assert described.modelinfo is not None
    assert described.details is not None
    running_now = client.ps().models
    assert openai_model in [m.model for m in running_now]
    raw_ps = http.get("/api/ps").json()["models"]
    assert all(set(m) >= RUNNING for m in raw_ps), raw_ps


def check_with_the_clients(gateway: Gateway, tmp_path: Path, openai_model: str) -> None:
    """The `ollama` library's types have every field set for every model, and `llm` lists
    the models through llm-ollama without a crash."""
    with ollama.Client(host=gateway.url) as client, gateway.client() as http:
        check_the_ollama_library(client, http, openai_model)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA", "LLM_"))},
        "OLLAMA_HOST": gateway.url,
        "LLM_USER_PATH": str(tmp_path / "llm"),
    }
    for command in (["ollama", "models"], ["models", "list"]):
        done = subprocess.run(
            [str(BIN / "llm"), *command], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert openai_model in done.stdout, done.stdout


@pytest.fixture
def openai_kind(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway in front of an Ollama stand-in and an OpenAI-compatible stand-in."""
    standin = start_standin(models=["llama3"])
    try:
        with (
            start_openai_standin(port=free_port(), models=["smollm2"]) as openai,
            start_gateway(
                tmp_path / "data",
                "--upstream",
                f"ol={standin.url}",
                "--upstream",
                f"oa={openai.url}/v1,kind=openai",
            ) as gateway,
        ):
            yield gateway
    finally:
        standin.stop()


@pytest.mark.slow
def test_the_clients_read_every_field_of_an_openai_kind_model(
    openai_kind: Gateway, tmp_path: Path
) -> None:
    check_with_the_clients(openai_kind, tmp_path, "smollm2")


@pytest.mark.slow
@pytest.mark.model
def test_the_clients_read_every_field_of_a_llama_server_model(tmp_path: Path) -> None:
    server, model = binaries()
    with LlamaServer(server, model, tmp_path / "llama.log").start() as llama:
        llama.wait_ready()
        with start_gateway(tmp_path / "data", "--upstream", f"ls={llama.url},kind=openai") as gw:
            check_with_the_clients(gw, tmp_path, "smollm2")
            with gw.client() as http:
                tags = http.get("/api/tags").json()["models"]
    (entry,) = tags
    # What llama-server says of its model, in Ollama's words.
    assert entry["details"]["quantization_level"] == "Q4_1"
    assert entry["details"]["parameter_size"] == "134.52M"
    assert entry["details"]["format"] == "gguf"
    assert entry["size"] > 0
