"""The Ollama and OpenAI fronts in-process: bad input, error shapes and statuses, `/`.

Every bad request is answered in its front's own shape with the right status, never a 500,
and leaves nothing behind: no record, no call upstream.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import ollama
import pytest

from tests.asgi import Local, in_process

pytestmark = pytest.mark.anyio

IMAGE_OK = "iVBORw0KGgo="


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], **extra}


async def upstream_calls(local: Local) -> list[dict[str, Any]]:
    assert local.standin is not None
    transport = httpx.ASGITransport(app=local.standin)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama.test") as client:
        found: list[dict[str, Any]] = (await client.get("/_standin/calls")).json()
        return found


async def nothing_left(local: Local) -> None:
    async with local.client() as admin:
        stored = (await admin.get("/api/v1/admin/dashboard")).json()
    assert stored == []
    assert await upstream_calls(local) == []


def ollama_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    for word in words:
        assert word in body["error"]


def openai_error(response: httpx.Response, status: int, param: str | None, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    for word in words:
        assert word in body["error"]["message"]


BAD_OLLAMA: list[tuple[str, Any, str]] = [
    ("/api/chat", b"{not json", "not valid JSON"),
    ("/api/chat", b"", "empty"),
    ("/api/chat", chat(stream="yes"), "$.stream"),
    ("/api/chat", chat(messages="hi"), "$.messages"),
    ("/api/chat", chat(messages=[]), "$.messages"),
    ("/api/chat", chat(messages=[{"content": "hi"}]), "role"),
    ("/api/chat", chat(messages=[{"role": "user", "content": "x", "images": ["%%%"]}]), "base64"),
    # Not ASCII: base64 decoding fails otherwise than on bad base64 (schemathesis found it).
    ("/api/chat", chat(messages=[{"role": "user", "images": ["w\u00b4"]}]), "base64"),
    ("/api/chat", chat(format=5), "$.format"),
    ("/api/chat", chat(format="yaml"), "$.format"),
    ("/api/chat", chat(model="../etc/passwd"), "$.model"),
    ("/api/chat", chat(model="evil.example:8080/x"), "$.model"),
    ("/api/chat", chat(top_logprobs=99), "$.top_logprobs"),
    ("/api/generate", {"model": "llama3"}, "`prompt`"),
    ("/api/generate", {"model": "llama3", "prompt": ""}, "prompt is empty"),
    ("/api/generate", {"model": "llama3", "prompt": "x", "images": ["no base64!"]}, "base64"),
    ("/api/generate", {"model": "llama3", "prompt": 5}, "$.prompt"),
    ("/api/embed", {"model": "llama3", "input": []}, "input is empty"),
    ("/api/embed", {"model": "llama3", "input": [1, 2]}, "$.input"),
    ("/api/embeddings", {"model": "llama3"}, "prompt"),
    ("/api/show", {}, "model is required"),
]


@pytest.mark.parametrize(("path", "body", "says"), BAD_OLLAMA)
async def test_bad_input_on_the_ollama_front_is_a_400_in_ollamas_shape(
    local: Local, path: str, body: Any, says: str
) -> None:
    async with local.client() as client:
        if isinstance(body, bytes):
            response = await client.post(path, content=body)
        else:
            response = await client.post(path, json=body)

    ollama_error(response, 400, says)
    await nothing_left(local)


async def test_the_ollama_front_ignores_unknown_fields_as_ollama_does(local: Local) -> None:
    async with local.client() as client:
        response = await client.post("/api/chat", json=chat(stream=False, whatever={"x": 1}))

    assert response.status_code == 200
    assert response.json()["message"]["content"] == "w0 w1 w2 w3 w4 w5 w6 w7 "


def _messages(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


BAD_OPENAI: list[tuple[str, Any, str | None, str]] = [
    ("/v1/chat/completions", b'{"model": ', None, "not valid JSON"),
    ("/v1/chat/completions", chat(temperature="hot"), "temperature", "got `str`"),
    ("/v1/chat/completions", chat(messages=[]), "messages", "length >= 1"),
    ("/v1/chat/completions", chat(messages={"role": "user"}), "messages", "array"),
    ("/v1/chat/completions", chat(frobnicate=True), None, "frobnicate"),
    ("/v1/chat/completions", chat(n=5), "n", "n=5"),
    (
        "/v1/chat/completions",
        chat(
            messages=_messages(
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}
            )
        ),
        "messages[0].content[0].image_url",
        "base64",
    ),
    (
        "/v1/chat/completions",
        chat(messages=_messages({"type": "image_url", "image_url": "data:;base64,\u00e9t\u00e9"})),
        "messages[0].content[0].image_url",
        "base64",
    ),
    (
        "/v1/chat/completions",
        chat(messages=_messages({"type": "image_url", "image_url": "https://x.example/a.png"})),
        "messages[0].content[0].image_url",
        "URLs are not supported",
    ),
    (
        "/v1/chat/completions",
        chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}),
        "response_format.json_schema.schema",
        "object",
    ),
    ("/v1/chat/completions", chat(response_format={"type": "yaml"}), "response_format.type", ""),
    ("/v1/chat/completions", chat(model="../x"), "model", ""),
    (
        "/v1/chat/completions",
        chat(
            messages=[
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}],
                }
            ]
        ),
        "messages[0].tool_calls[0].function.arguments",
        "JSON object",
    ),
    ("/v1/chat/completions", chat(reasoning_effort="enormous"), "reasoning_effort", "enormous"),
    ("/v1/completions", {"model": "llama3", "prompt": ["a", "b"]}, "prompt", ""),
    ("/v1/completions", {"model": "llama3", "prompt": "a", "echo": True}, "echo", ""),
    ("/v1/embeddings", {"model": "llama3", "input": [[1, 2]]}, "input[0]", ""),
    ("/v1/embeddings", {"model": "llama3", "input": []}, "input", ""),
    ("/v1/embeddings", {"model": "llama3", "input": "x", "encoding_format": "hex"}, None, ""),
]


@pytest.mark.parametrize(("path", "body", "param", "says"), BAD_OPENAI)
async def test_bad_input_on_the_openai_front_is_a_400_in_openais_shape(
    local: Local, path: str, body: Any, param: str | None, says: str
) -> None:
    async with local.client() as client:
        if isinstance(body, bytes):
            response = await client.post(path, content=body)
        else:
            response = await client.post(path, json=body)

    if param is None and "encoding_format" in str(body):
        param = "encoding_format"
    openai_error(response, 400, param, says)
    assert response.json()["error"]["type"] == "invalid_request_error"
    await nothing_left(local)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/embed", {"model": "llama3", "input": ["a"] * 100_000}),
        ("/v1/embeddings", {"model": "llama3", "input": ["a"] * 100_000}),
    ],
)
async def test_100000_inputs_within_max_body_are_413(local: Local, path: str, body: Any) -> None:
    async with local.client() as client:
        response = await client.post(path, json=body)

    assert len(response.request.content) < local.settings.max_body
    assert response.status_code == 413
    message = response.json()["error"]
    assert "2048" in (message if isinstance(message, str) else message["message"])
    await nothing_left(local)


async def test_a_body_over_max_body_is_413_in_each_fronts_shape(local: Local) -> None:
    big = {"model": "llama3", "prompt": "x" * (local.settings.max_body + 1)}
    async with local.client() as client:
        ollama = await client.post("/api/generate", json=big)
        openai = await client.post("/v1/completions", json=big)

    ollama_error(ollama, 413, "larger than")
    openai_error(openai, 413, None, "larger than")


async def test_unknown_paths_answer_in_each_fronts_shape(local: Local) -> None:
    async with local.client() as client:
        ollama = await client.get("/api/nothing")
        openai = await client.post("/v1/audio/speech", json={})
        seed = await client.get("/api/v1/nothing")
        wrong_method = await client.get("/api/chat")

    ollama_error(ollama, 404, "no route")
    openai_error(openai, 404, None, "no route")
    assert seed.json()["error"]["code"] == "not_found"
    ollama_error(wrong_method, 405)


async def test_a_label_header_too_long_is_400(local: Local) -> None:
    headers = {"X-Project": "p" * 201}
    async with local.client() as client:
        client.headers.update(headers)
        response = await client.post("/api/chat", json=chat())

    ollama_error(response, 400, "X-Project", "200")
    await nothing_left(local)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/pull", {"model": "llama3"}),
        ("/api/push", {"model": "llama3"}),
        ("/api/create", {"model": "x", "from": "llama3"}),
        ("/api/copy", {"source": "llama3", "destination": "x"}),
        ("/api/blobs/sha256:abc", {}),
    ],
)
async def test_model_management_is_refused(local: Local, path: str, body: Any) -> None:
    async with local.client() as client:
        response = await client.post(path, json=body)
        deleted = await client.request("DELETE", "/api/delete", json={"model": "llama3"})

    ollama_error(response, 403, "does not pass", "model management")
    ollama_error(deleted, 403, "(delete)")
    await nothing_left(local)


async def test_root_answers_clients_as_ollama_does_and_browsers_with_the_page(
    local: Local,
) -> None:
    async with local.client(admin=False) as anyone:
        probe = await anyone.head("/")
        plain = await anyone.get("/")
        browser = await anyone.get("/", headers={"Accept": "text/html,*/*;q=0.8"})
    async with local.client() as admin:
        page = await admin.get("/", headers={"Accept": "text/html"})

    assert probe.status_code == 200
    assert (plain.status_code, plain.text) == (200, "Ollama is running")
    assert plain.headers["content-type"].startswith("text/plain")
    assert browser.status_code == 401
    assert page.status_code == 200
    assert '<script type="module" src="/static/dashboard.js">' in page.text


async def test_listing_and_version_never_record_a_call(local: Local) -> None:
    async with local.client() as client:
        for path in ("/api/tags", "/api/ps", "/api/version", "/v1/models", "/v1/models/llama3"):
            assert (await client.get(path)).status_code == 200, path
        shown = await client.post("/api/show", json={"name": "llama3"})
        missing = await client.post("/api/show", json={"model": "nope"})
        model_404 = await client.get("/v1/models/nope")
        bad_name = await client.get("/v1/models/..%2Fx")

    assert shown.json()["details"]["family"] == "llama"
    ollama_error(missing, 404, "nope")
    openai_error(model_404, 404, None, "nope")
    assert model_404.json()["error"]["type"] == "not_found_error"
    assert bad_name.status_code in (400, 404)
    async with local.client() as admin:
        assert (await admin.get("/api/v1/admin/dashboard")).json() == []


async def test_api_tags_and_show_are_in_ollamas_form_whatever_the_upstream(
    tmp_path: Any,
) -> None:
    """An OpenAI-kind upstream describes a model as an OpenAI model object (id, object,
    owned_by), with none of Ollama's fields: passed on as it was, the `ollama` library
    listed it as `model=None`, found using the gateway against llama-server. Every model is
    rendered from its typed description, with every field Ollama's own list has."""
    from calls.types import ModelInfo
    from tests.fakes import FakeUpstream

    ollama_entry = {"name": "llama3:latest", "model": "llama3:latest", "size": 4_661_224_676}

    class Mixed(FakeUpstream):
        async def models(self) -> list[ModelInfo]:
            openai_object = {"id": "smollm2", "object": "model", "owned_by": "llamacpp"}
            return [
                ModelInfo(name="llama3:latest", size=4_661_224_676, raw=ollama_entry),
                ModelInfo(name="smollm2", raw=openai_object),
            ]

        async def show(self, model: str) -> ModelInfo:
            if model == "smollm2":
                return ModelInfo(name="smollm2")
            return ModelInfo(name=model, family="llama", metadata={"general.architecture": "x"})

    async with in_process(tmp_path / "data", upstream=Mixed()) as local, local.client() as client:
        listed = (await client.get("/api/tags")).json()["models"]
        shown = (await client.post("/api/show", json={"model": "smollm2"})).json()
        native = (await client.post("/api/show", json={"model": "llama3"})).json()

    fields = {"name", "model", "modified_at", "size", "digest", "details"}
    assert [set(m) for m in listed] == [fields, fields]
    assert [(m["name"], m["model"], m["size"]) for m in listed] == [
        ("llama3:latest", "llama3:latest", 4_661_224_676),
        ("smollm2", "smollm2", 0),
    ]
    # /api/show too: the ollama library requires model_info, which an OpenAI model object
    # does not have (it raised a ValidationError against llama-server).
    assert ollama.ShowResponse(**shown).modelinfo == {}
    assert shown["capabilities"] == ["completion"]
    assert native["details"]["family"] == "llama"
    assert native["model_info"] == {"general.architecture": "x"}


async def test_keys_label_and_limit_every_front(tmp_path: Any) -> None:
    async with in_process(tmp_path / "data") as local:
        async with local.client() as admin:
            made = await admin.post(
                "/api/v1/admin/keys",
                json={"label": "team", "models": ["llama3"], "project": "billing"},
            )
            key = made.json()["key"]
            assert made.json()["info"]["project"] == "billing"
        async with local.client(admin=False, Authorization=f"Bearer {key}") as client:
            ok = await client.post("/v1/chat/completions", json=chat())
            refused = await client.post("/api/chat", json=chat(model="qwen"))
            listed = await client.get("/v1/models")
        async with local.client(admin=False) as stranger:
            unauthorized = await stranger.post(
                "/v1/embeddings", json={"model": "llama3", "input": "x"}
            )
        async with local.client() as admin:
            [record] = (await admin.get("/api/v1/admin/dashboard")).json()
            patched = await admin.patch(
                f"/api/v1/admin/keys/{made.json()['info']['id']}", json={"project": None}
            )

    assert ok.status_code == 200
    ollama_error(refused, 403, "may not use")
    assert [m["id"] for m in listed.json()["data"]] == ["llama3:latest"]
    openai_error(unauthorized, 401, None, "needs an API key")
    assert unauthorized.json()["error"]["type"] == "authentication_error"
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    assert (record["project"], record["key_label"], record["front"]) == (
        "billing",
        "team",
        "openai",
    )
    assert patched.json()["project"] is None


async def test_a_call_refused_at_the_door_leaves_no_record_only_its_log_line(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused before it reaches a model (401, 403, 413, 429: README, "Usage records"), a
    call is no usage: it leaves no record, which a caller without a key could otherwise
    write at will, only the request log's line with its status and code."""
    caplog.set_level(logging.INFO)
    async with in_process(tmp_path / "data", "--max-prompt", "100") as local:
        async with local.client() as admin:
            made = await admin.post(
                "/api/v1/admin/keys",
                json={"label": "one", "models": ["llama3"], "limits": {"rpm": 1}},
            )
        key = made.json()["key"]
        async with local.client(admin=False) as stranger:
            no_key = await stranger.post("/api/chat", json=chat())
            wrong_key = await stranger.post(
                "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer ohk_x"}
            )
        async with local.client(admin=False, Authorization=f"Bearer {key}") as client:
            other_model = await client.post("/api/chat", json=chat(model="qwen"))
            too_long = await client.post(
                "/api/v1/ai/ask_sync", json={"agent": "llama3", "content": "x" * 101}
            )
            first = await client.post(
                "/api/v1/ai/ask_sync", json={"agent": "llama3", "content": "hi"}
            )
            over_limit = await client.post(
                "/api/v1/ai/ask_sync", json={"agent": "llama3", "content": "hi"}
            )
        async with local.client() as admin:
            stored = (await admin.get("/api/v1/admin/dashboard")).json()

    refused = [no_key, wrong_key, other_model, too_long, over_limit]
    assert [r.status_code for r in refused] == [401, 401, 403, 413, 429]
    assert first.status_code == 200
    assert [r["id"] for r in stored] == [first.headers["x-request-id"]]
    lines = [r.getMessage() for r in caplog.records if r.name == "ollama_host.requests"]
    for response in refused:
        (line,) = [line for line in lines if f"id={response.headers['x-request-id']} " in line]
        assert f" status={response.status_code} " in line, line
