"""ollama_host/embedded.py: a first `scripts/run` without a model server runs the embedded
model (llama-server with SmolLM2-135M) as its upstream, never outlives it, and never runs it
when an upstream is named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_host import embedded
from ollama_host.settings import parse_settings
from tests.gateway_proc import ROOT
from tests.llama import binaries
from tests.real_clients import loopback_only

NAMED: list[tuple[list[str], dict[str, str]]] = [
    (["--ollama", "gpu-box"], {}),
    (["--upstream", "a=http://10.0.0.5:11434"], {}),
    ([], {"OLLAMA_HOST": "gpu-box:11434"}),
    ([], {"OLLAMA_GATEWAY_UPSTREAM": "a=http://10.0.0.5:11434"}),
    # Named as Ollama's default: named all the same.
    (["--ollama", "127.0.0.1:11434"], {}),
]


@pytest.mark.parametrize(("argv", "env"), NAMED)
def test_any_upstream_named_turns_the_embedded_model_off(
    argv: list[str], env: dict[str, str]
) -> None:
    settings = parse_settings(argv, {"OLLAMA_GATEWAY_EMBEDDED_MODEL": "1", **env})

    assert settings.embedded_model is False


def test_an_upstreams_file_turns_it_off(tmp_path: Path) -> None:
    file = tmp_path / "upstreams.toml"
    file.write_text('[upstream.a]\nurl = "http://10.0.0.5:11434"\n')

    settings = parse_settings(["--embedded-model", "--upstreams", str(file)], {})

    assert settings.embedded_model is False


def test_without_an_upstream_the_switch_holds() -> None:
    assert parse_settings(["--embedded-model"], {}).embedded_model is True
    assert parse_settings([], {"OLLAMA_GATEWAY_EMBEDDED_MODEL": "1"}).embedded_model is True
    assert parse_settings([], {}).embedded_model is False


@pytest.fixture
def listening() -> Iterator[tuple[str, int]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[:2]


def test_something_at_ollamas_address_is_asked_instead(
    listening: tuple[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def never() -> None:
        raise AssertionError("the embedded model was provided")

    monkeypatch.setattr(embedded, "_binaries", never)
    settings = parse_settings(["--embedded-model", "--data", str(tmp_path)], {})

    assert embedded.start(settings, ollama=listening) is None


def test_the_switch_off_starts_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def never() -> None:
        raise AssertionError("the embedded model was provided")

    monkeypatch.setattr(embedded, "_binaries", never)
    settings = parse_settings(["--data", str(tmp_path)], {})

    assert embedded.start(settings, ollama=("127.0.0.1", 9)) is None


# -- a fresh clone, as a new user runs it ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.timeout(1800)
def test_a_fresh_clone_answers_the_readmes_examples_with_the_embedded_model(
    tmp_path: Path,
) -> None:
    """`git clone`, then `scripts/run`: in a network namespace where nothing answers at
    Ollama's address, the README's "Try it" commands, run literally, get real answers and
    records; SIGTERM, SIGKILL and a failure of the gateway each end its llama-server; and
    with an upstream named, none starts (tests/embedded_smoke.py)."""
    binaries()  # built once into the machine's cache, outside the namespace (it needs PyPI)
    namespace = loopback_only()
    clone = tmp_path / "clone"
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", head], check=True)
    # The clone's own .venv, made as scripts/run makes it (it needs PyPI, so out here; inside,
    # scripts/run finds it made and goes straight on).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA", "VIRTUAL_ENV"))}
    subprocess.run([str(clone / "scripts" / "setup")], check=True, timeout=900, env=env)

    done = subprocess.run(
        [*namespace, sys.executable, "-m", "tests.embedded_smoke", str(clone), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    log = seen["sigterm"]["log"]
    assert "EMBEDDED MODEL" in log, log
    assert "asking embedded (openai)" in log, log
    models, ask, ask_json, stream, dashboard, health = seen["try_it"]
    assert all(step["code"] == 0 for step in seen["try_it"]), seen["try_it"]
    assert json.loads(models["out"]) == [embedded.NAME]
    # A real answer: text from the model, not an error in JSON.
    assert ask["out"].strip(), ask
    assert not ask["out"].startswith("{"), ask
    assert json.loads(ask_json["out"])["output"].strip(), ask_json
    assert "event: done" in stream["out"], stream
    done_data = stream["out"].split("event: done\ndata: ", 1)[1].splitlines()[0]
    # A model this small may never end on its own: the embedded model's default stops it.
    assert 0 < json.loads(done_data)["output_tokens"] <= embedded.MAX_TOKENS
    records = json.loads(dashboard["out"])
    (record,) = records
    assert (record["project"], record["process_id"], record["subprocess_id"]) == (
        "projeto1",
        "001",
        "001",
    )
    assert (record["status"], record["model_name"], record["upstream"]) == (
        "ok",
        embedded.NAME,
        embedded.UPSTREAM,
    )
    assert record["output"].strip() == ask["out"].strip()
    assert record["output_tokens"] > 0
    assert json.loads(health["out"])["status"] == "ok"
    # The model never outlives the gateway: a clean stop stops it, a kill -9 takes it along.
    for end in ("sigterm", "sigkill"):
        assert len(seen[end]["models"]) == 1, seen[end]["log"]
        assert seen[end]["ended"], seen[end]["log"]
    assert seen["sigterm"]["code"] == 0
    assert "stopped the embedded model" in seen["sigterm"]["log"]
    # A gateway that fails to serve (its port taken) stops its model on the way out.
    failed = seen["failed"]
    assert failed["code"] != 0, failed["log"]
    assert len(failed["models"]) == 1, failed["log"]
    assert failed["ended"], failed["log"]
    assert "stopped the embedded model" in failed["log"]
    # With an upstream named, never.
    assert seen["named"]["models"] == []
    assert "EMBEDDED MODEL" not in seen["named"]["log"]
