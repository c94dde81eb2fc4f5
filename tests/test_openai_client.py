"""The OpenAI-compatible upstream kind against the OpenAI stand-in, in this process."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from calls.errors import (
    ModelNotFound,
    UpstreamFailed,
    UpstreamUnauthorized,
    UpstreamWrongAddress,
)
from calls.types import CallRequest, Completion, EmbedRequest, Generation, Message, Piece
from openai_client import OpenAIUpstream
from openai_client.client import exposed_name
from tests import openai_standin

pytestmark = pytest.mark.anyio


def server(
    *, models: list[str] | None = None, key: str | None = None, path: str = "/v1", **kw: Any
) -> tuple[OpenAIUpstream, Any]:
    app = openai_standin.create_app(models, api_key=key, **kw)
    upstream = OpenAIUpstream(
        httpx.ASGITransport(app=app), "http://llama.test:8080" + path, name="llama", api_key=key
    )
    return upstream, app


async def seen(app: Any) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://llama.test"
    ) as client:
        calls: list[dict[str, Any]] = (await client.get("/_standin/calls")).json()
        return calls


def ask(content: str, model: str = "smollm2", **generation: Any) -> CallRequest:
    return CallRequest(
        model=model, messages=[Message("user", content)], generation=Generation(**generation)
    )


async def pieces_of(upstream: OpenAIUpstream, request: CallRequest) -> tuple[list[Piece], Any]:
    stream = await upstream.open_stream(request)
    try:
        got = [piece async for batch in stream.batches() for piece in batch]
    finally:
        await stream.aclose()
    return got, stream.metrics


async def test_a_streamed_answer_brings_its_pieces_usage_and_timings() -> None:
    upstream, app = server()

    pieces, metrics = await pieces_of(upstream, ask("hello there [[tokens=3]]"))

    assert [p.content for p in pieces] == ["o0 ", "o1 ", "o2 "]
    assert (metrics.input_tokens, metrics.output_tokens) == (4, 3)  # 3 words and a start
    assert metrics.done_reason == "stop"
    # llama-server's timings, from milliseconds.
    assert (metrics.prompt_eval_seconds, metrics.eval_seconds) == (0.0125, 0.043)
    body = (await seen(app))[-1]["body"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_a_whole_answer_is_collected_from_a_stream() -> None:
    upstream, app = server()

    answer = await upstream.answer(ask("[[tokens=4]] [[think=2]]"))

    assert answer.content == "o0 o1 o2 o3 "
    assert answer.thinking == "r0 r1 "
    assert answer.metrics.output_tokens == 6
    assert answer.upstream == "llama"
    assert (await seen(app))[-1]["body"]["stream"] is True


async def test_tool_calls_streamed_in_fragments_arrive_whole() -> None:
    upstream, _ = server()

    answer = await upstream.answer(ask("[[tokens=0]] [[tool=weather]]"))

    assert answer.tool_calls is not None
    (call,) = answer.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1",
        "weather",
        {"city": "Paris"},
    )
    assert answer.metrics.done_reason == "tool_calls"


async def test_ollamas_generation_fields_go_in_openais_names() -> None:
    upstream, app = server()
    options = {"num_predict": 2, "temperature": 0.3, "top_k": 5, "num_ctx": 4096}

    answer = await upstream.answer(ask("[[tokens=5]]", options=options, format="json", think="low"))

    body = (await seen(app))[-1]["body"]
    assert answer.content == "o0 o1 "
    assert answer.metrics.done_reason == "length"
    assert (body["max_tokens"], body["temperature"], body["top_k"]) == (2, 0.3, 5)
    assert "num_ctx" not in body  # an Ollama runner setting, with no equivalent here
    assert body["response_format"] == {"type": "json_object"}
    assert body["reasoning_effort"] == "low"


async def test_a_raw_completion_uses_v1_completions() -> None:
    upstream, app = server()
    request = CallRequest(model="smollm2", completion=Completion(prompt="Once [[tokens=2]]"))

    answer = await upstream.answer(request)

    assert answer.content == "o0 o1 "
    assert (await seen(app))[-1]["path"] == "/v1/completions"


async def test_embeddings_come_back_in_input_order() -> None:
    upstream, _ = server()

    result = await upstream.embed(EmbedRequest(model="smollm2", input=["a", "bb", "ccc"]))

    assert result.vectors == [[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]]
    assert result.input_tokens == 3


async def test_models_and_which_are_loaded() -> None:
    upstream, _ = server(models=["a", "b"], unloaded=["b"])

    models = [m.name for m in await upstream.models()]
    loaded = [m.name for m in await upstream.loaded()]

    assert (models, loaded) == (["a", "b"], ["a"])


async def test_the_root_address_works_as_well_as_v1() -> None:
    upstream, _ = server(path="")

    assert [m.name for m in await upstream.models()] == ["smollm2"]


async def test_a_missing_model_is_told_from_a_wrong_address() -> None:
    upstream, _ = server()
    wrong, _ = server(path="/v1/v1")

    with pytest.raises(ModelNotFound):
        await upstream.answer(ask("hi", model="gpt-9"))
    with pytest.raises(UpstreamWrongAddress, match="has no /v1/v1/models"):
        await wrong.models()


async def test_a_404_for_the_model_list_is_a_wrong_address_whatever_it_says() -> None:
    # The list names no model: a 404 for it is the server's "no such path", even when its
    # message happens to speak of models.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "no models route here"}})

    upstream = OpenAIUpstream(httpx.MockTransport(handler), "http://llama.test:8080/x")
    with pytest.raises(UpstreamWrongAddress, match="has no /x/v1/models"):
        await upstream.models()


async def test_the_key_goes_to_the_server_and_a_wrong_one_is_told() -> None:
    upstream, app = server(key="sk-right")
    wrong = OpenAIUpstream(
        httpx.ASGITransport(app=app), "http://llama.test:8080", name="w", api_key="sk-wrong"
    )

    await upstream.answer(ask("hi"))
    with pytest.raises(UpstreamUnauthorized) as refused:
        await wrong.answer(ask("hi"))

    assert (await seen(app))[0]["authorization"] == "Bearer sk-right"
    assert "sk-wrong" not in refused.value.message


async def test_an_error_mid_stream_keeps_what_came_before() -> None:
    upstream, _ = server()
    stream = await upstream.open_stream(ask("[[tokens=5]] [[error_after=2]]"))
    got: list[str] = []

    async def read() -> None:
        async for batch in stream.batches():
            got.extend(p.content for p in batch)

    with pytest.raises(UpstreamFailed, match="slot crashed"):
        await read()
    await stream.aclose()

    assert got == ["o0 ", "o1 "]


@pytest.mark.parametrize(
    ("server_id", "name"),
    [
        ("smollm2", "smollm2"),
        ("qwen2.5:7b", "qwen2.5:7b"),
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
        ("C:\\models\\Llama 3 8B.gguf", "Llama-3-8B"),
        ("../x", "x"),
        ("/", "model"),
    ],
)
def test_a_model_listed_by_its_file_path_gets_a_name_clients_can_ask_for(
    server_id: str, name: str
) -> None:
    assert exposed_name(server_id) == name


async def test_llama_server_without_an_alias_is_asked_by_file_name() -> None:
    """llama-server started without --alias lists its model by the file's path, which no
    model name may be; the gateway lists it by its file name and sends the server its own id
    (found using the gateway against a real llama-server as a user would)."""
    path = "/root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    upstream, app = server(models=[path])

    listed = [m.name for m in await upstream.models()]
    answer = await upstream.answer(ask("hello [[tokens=2]]", model="SmolLM2-135M-Instruct.Q4_1"))

    assert listed == ["SmolLM2-135M-Instruct.Q4_1"]
    assert answer.content
    assert (await seen(app))[-1]["body"]["model"] == path


async def test_counts_and_timings_no_call_can_have_become_unknown() -> None:
    # A third-party OpenAI-compatible service can send anything: the counts are bounded as
    # they enter, the answer itself is kept.
    answer_body = {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2**63, "completion_tokens": 9_999_999_999_999},
        "timings": {"prompt_ms": 1e308 * 10, "predicted_ms": 12.5},
    }
    body = b"data: " + msgspec.json.encode(answer_body) + b"\n\ndata: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    upstream = OpenAIUpstream(httpx.MockTransport(handler), "http://odd.test/v1", name="odd")

    answer = await upstream.answer(ask("hi"))

    metrics = answer.metrics
    assert answer.content == "hi"
    assert (metrics.input_tokens, metrics.output_tokens) == (None, None)
    assert (metrics.prompt_eval_seconds, metrics.eval_seconds) == (None, 0.0125)
