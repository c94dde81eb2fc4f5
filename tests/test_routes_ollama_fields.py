"""The Ollama front's answers carry every field Ollama's own do, whatever the upstream's kind,
and it takes the empty fields Ollama's clients send as absent ones, as Ollama does.

Ollama's last line of a chat or completion always has `done_reason`, `total_duration`,
`load_duration`, `prompt_eval_count`, `prompt_eval_duration`, `eval_count` and
`eval_duration` (a completion also `context`, unless `raw`), and an embedding `total_duration`,
`load_duration` and `prompt_eval_count` (server/routes.go). Clients rely on them: the Vercel AI
SDK's Ollama provider rejected an embedding from an OpenAI-kind upstream, which had no
`total_duration`, as an "Invalid JSON response". In process, against the OpenAI stand-in
(which sends llama-server's `timings`, or with `[[nousage=1]]` nothing at all) and the Ollama
stand-in (which says everything itself).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openai_client import OpenAIUpstream
from tests import openai_standin
from tests.asgi import Local, in_process

pytestmark = pytest.mark.anyio

METRICS = {
    "done",
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}
CHAT = {"model", "created_at", "message"} | METRICS
GENERATE = {"model", "created_at", "response", "context"} | METRICS
EMBED = {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}


@pytest.fixture
async def openai_kind(tmp_path: Path) -> AsyncIterator[tuple[Local, Any]]:
    """A gateway whose one upstream is the OpenAI stand-in, in this process."""
    app = openai_standin.create_app(["smollm2"])
    upstream = OpenAIUpstream(
        httpx.ASGITransport(app=app), "http://llama.test:8080/v1", name="llama"
    )
    async with in_process(tmp_path / "data", upstream=upstream) as local:
        yield local, app


async def standin_calls(app: Any) -> list[dict[str, Any]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://llama.test") as client:
        calls: list[dict[str, Any]] = (await client.get("/_standin/calls")).json()
        return calls


def last_line(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines() if line]
    assert all(not line["done"] for line in lines[:-1])
    last: dict[str, Any] = lines[-1]
    return last


async def answers(local: Local, model: str, content: str) -> dict[str, dict[str, Any]]:
    """The four ways to ask for an answer: chat and generate, whole and streamed."""
    chat = {"model": model, "messages": [{"role": "user", "content": content}]}
    generate = {"model": model, "prompt": content}
    async with local.client() as client:
        whole_chat = await client.post("/api/chat", json={**chat, "stream": False})
        streamed_chat = await client.post("/api/chat", json=chat)
        whole_generate = await client.post("/api/generate", json={**generate, "stream": False})
        streamed_generate = await client.post("/api/generate", json=generate)
    return {
        "chat": whole_chat.json(),
        "chat streamed": last_line(streamed_chat),
        "generate": whole_generate.json(),
        "generate streamed": last_line(streamed_generate),
    }


def fields(kind: str) -> set[str]:
    return CHAT if kind.startswith("chat") else GENERATE


async def test_an_openai_kind_answer_has_every_field_llama_server_timings_as_said(
    openai_kind: tuple[Local, Any],
) -> None:
    local, _ = openai_kind

    found = await answers(local, "smollm2", "hello there [[tokens=3]]")

    for kind, answer in found.items():
        assert set(answer) == fields(kind), kind
        # llama-server's timings: 12.5 ms reading the prompt, 43 ms generating; its total
        # is the two, so nothing is left for loading.
        assert answer["prompt_eval_duration"] == 12_500_000, kind
        assert answer["eval_duration"] == 43_000_000, kind
        assert answer["total_duration"] == 55_500_000, kind
        assert answer["load_duration"] == 0, kind
        assert (answer["prompt_eval_count"], answer["eval_count"]) == (4, 3), kind
        assert answer["done_reason"] == "stop", kind
    # Not raw: Ollama sends the context; the OpenAI-compatible server has none to give.
    assert found["generate"]["context"] == []


async def test_an_upstream_that_reports_nothing_gets_every_field_from_the_gateways_clock(
    openai_kind: tuple[Local, Any],
) -> None:
    local, _ = openai_kind

    found = await answers(local, "smollm2", "hi [[tokens=3]] [[nousage=1]]")

    async with local.client() as admin:
        records = (await admin.get("/api/v1/admin/dashboard")).json()
    for kind, answer in found.items():
        assert set(answer) == fields(kind), kind
        # Newest first: the records of chat, chat streamed, generate, generate streamed.
        record = records[3 - list(found).index(kind)]
        assert answer["total_duration"] == round(record["total_seconds"] * 1e9), kind
        assert (answer["prompt_eval_count"], answer["done_reason"]) == (0, "stop"), kind
        assert answer["eval_count"] == record["output_tokens"], kind
        assert answer["load_duration"] == 0, kind
        assert answer["prompt_eval_duration"] + answer["eval_duration"] == pytest.approx(
            answer["total_duration"], abs=1
        )
        # The record itself stays as the upstream said it: nothing.
        assert (record["upstream_seconds"], record["eval_seconds"]) == (None, None), kind
        if kind.endswith("streamed"):
            # The time to the first piece, as the gateway saw it, is the prompt's (ASGI
            # transports hand over a whole body at once: timed pieces need a real server).
            assert answer["prompt_eval_duration"] == round(record["ttft_seconds"] * 1e9), kind
            assert answer["eval_count"] == 3, kind


async def test_an_ollama_upstreams_own_figures_go_as_it_said_them(local: Local) -> None:
    found = await answers(local, "llama3", "hello [[tokens=2]] [[load=0.01]]")

    async with local.client() as admin:
        records = (await admin.get("/api/v1/admin/dashboard")).json()
    for kind, answer in found.items():
        assert set(answer) == fields(kind), kind
        # The record keeps the upstream's own figures, in seconds to the nanosecond.
        said = records[3 - list(found).index(kind)]
        assert said["load_seconds"] >= 0.01
        for name, field in (
            ("total_duration", "upstream_seconds"),
            ("load_duration", "load_seconds"),
            ("prompt_eval_duration", "prompt_eval_seconds"),
            ("eval_duration", "eval_seconds"),
        ):
            assert answer[name] == round(said[field] * 1e9), (kind, name)
        assert answer["prompt_eval_count"] == said["input_tokens"] == 3, kind
        assert answer["eval_count"] == said["output_tokens"] == 2, kind
    # The stand-in's context, passed on.
    assert found["generate"]["context"] == [1, 2, 3]


async def test_a_raw_completion_has_no_context_as_ollama_sends_none(
    openai_kind: tuple[Local, Any],
) -> None:
    local, _ = openai_kind
    body = {"model": "smollm2", "prompt": "x [[tokens=1]]", "raw": True}

    async with local.client() as client:
        whole = (await client.post("/api/generate", json={**body, "stream": False})).json()
        streamed = last_line(await client.post("/api/generate", json=body))

    assert set(whole) == set(streamed) == GENERATE - {"context"}


async def test_an_embedding_has_every_field_whatever_the_upstream(
    openai_kind: tuple[Local, Any], tmp_path: Path
) -> None:
    local, _ = openai_kind
    body = {"model": "smollm2", "input": ["one two", "three"]}

    async with local.client() as client:
        response = await client.post("/api/embed", json=body)
        records = (await client.get("/api/v1/admin/dashboard")).json()
    async with in_process(tmp_path / "ollama") as ollama, ollama.client() as client:
        native = (await client.post("/api/embed", json={**body, "model": "llama3"})).json()

    reply = response.json()
    assert set(reply) == EMBED
    assert reply["prompt_eval_count"] == 3
    assert reply["total_duration"] == round(records[0]["total_seconds"] * 1e9)
    assert reply["load_duration"] == 0
    assert response.headers["x-request-id"] == records[0]["id"]
    assert set(native) == EMBED


async def test_empty_images_context_and_system_are_absent_ones(
    openai_kind: tuple[Local, Any],
) -> None:
    """Ollama reads `"images": []`, `"system": ""`, ... as absent; LiteLLM's ollama/
    provider sends `"images": []` with every call, each of which was refused with 400."""
    local, app = openai_kind
    empty = {"images": [], "context": [], "system": "", "template": "", "suffix": ""}

    async with local.client() as client:
        response = await client.post(
            "/api/generate",
            json={"model": "smollm2", "prompt": "go [[tokens=2]]", "stream": False, **empty},
        )
        refused = await client.post(
            "/api/generate",
            json={"model": "smollm2", "prompt": "go", "stream": False, "system": "Be brief."},
        )

    assert response.status_code == 200, response.text
    assert response.json()["response"] == "o0 o1 "
    sent = (await standin_calls(app))[-1]
    assert sent["path"] == "/v1/completions"
    assert sent["body"]["prompt"] == "go [[tokens=2]]"
    assert "suffix" not in sent["body"]
    # What an OpenAI-compatible server cannot honour is still refused, naming it.
    assert refused.status_code == 400
    assert "system" in refused.json()["error"]
