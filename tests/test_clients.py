"""The real clients, unchanged, against a real gateway in front of the stand-in.

The `ollama` and `openai` Python libraries (and, in test_clients_js.py, the `ollama` npm
package) are pointed at the gateway's base URL with an API key, as a team would point them.
Each test checks what the client sees (its own types and exceptions) and what the gateway
recorded (front, endpoint, tokens, labels), and, where it matters, what reached the stand-in.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
from typing import Any

import httpx
import ollama
import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam

from tests.gateway_proc import Gateway
from tests.helpers import Keys, calls_with, labels, records, unique, wait_records
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server

# A 1x1 PNG: the images a client sends are base64 of its bytes.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


class Forecast(pydantic.BaseModel):
    city: str
    degrees: float
    sunny: bool


def assert_record(
    record: dict[str, Any], front: str, endpoint: str, project: str, **fields: Any
) -> None:
    assert record["front"] == front
    assert record["endpoint"] == endpoint
    assert record["project"] == project
    assert (record["process_id"], record["subprocess_id"]) == ("proc-1", "sub-2")
    assert record["key_label"] == "main"
    for name, value in fields.items():
        assert record[name] == value, (name, record)


def sent(standin: StandIn, marker: str) -> dict[str, Any]:
    """What reached the stand-in for the one call whose last message holds `marker`."""
    [call] = calls_with(standin.calls(), marker)
    return call


# -- the ollama library --------------------------------------------------------------------------


def ollama_client(gw: Gateway, key: str, project: str) -> ollama.Client:
    return ollama.Client(
        host=gw.url, headers={"Authorization": f"Bearer {key}", **labels(project)}, timeout=20
    )


def test_ollama_chat_whole_with_tools_images_and_a_schema(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("ol-chat")
    client = opened.enter_context(ollama_client(gw, keys.main, project))

    tools = client.chat(
        "llama3",
        messages=[{"role": "user", "content": f"{project} weather? [[tool_calls=1]]"}],
        tools=[WEATHER],
        stream=False,
    )
    shaped = client.chat(
        "llama3",
        messages=[{"role": "user", "content": f"{project} look", "images": [PNG]}],
        format=Forecast.model_json_schema(),
        options={"temperature": 0, "seed": 7},
        stream=False,
    )

    assert tools.message.tool_calls is not None
    [call] = tools.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "w0"}
    assert shaped.done
    assert shaped.done_reason == "stop"
    assert Forecast.model_validate_json(shaped.message.content or "") == Forecast(
        city="w0", degrees=1.5, sunny=True
    )
    seen = sent(standin, f"{project} look")
    assert seen["path"] == "/api/chat"
    assert seen["body"]["messages"][0]["images"] == [len(base64.b64encode(PNG))]
    assert seen["body"]["options"] == {"temperature": 0, "seed": 7}
    assert seen["body"]["format"]["properties"]["sunny"] == {"title": "Sunny", "type": "boolean"}
    first, second = wait_records(admin, project, 2)
    assert_record(first, "ollama", "/api/chat", project, status="ok", streamed=False)
    assert first["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "w0"}}}
    ]
    assert first["input_tokens"] == 3
    assert first["output_tokens"] == 9
    assert second["input"][0]["images"] == 1
    assert second["output"] == shaped.message.content
    assert second["load_seconds"] is not None
    assert second["eval_seconds"] is not None


def test_ollama_chat_streamed_relays_tool_call_and_thinking_only_chunks(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("ol-stream")
    client = opened.enter_context(ollama_client(gw, keys.main, project))

    parts = list(
        client.chat(
            "llama3",
            messages=[
                {"role": "user", "content": f"{project} [[tokens=3]] [[think=1]] [[tool_calls=1]]"}
            ],
            tools=[WEATHER],
            think=True,
            stream=True,
        )
    )

    assert "".join(p.message.content or "" for p in parts) == "w0 w1 w2 "
    assert "".join(p.message.thinking or "" for p in parts) == "hmm hmm "
    calls = [p.message.tool_calls for p in parts if p.message.tool_calls]
    assert calls
    assert calls[0][0].function.name == "get_weather"
    # The chunk that carries only the tool call reaches the client as a chunk of its own.
    assert any(p.message.tool_calls and not p.message.content for p in parts)
    assert parts[-1].done
    assert parts[-1].eval_count == 4
    assert not any(p.done for p in parts[:-1])
    [record] = wait_records(admin, project, 1)
    assert_record(record, "ollama", "/api/chat", project, status="ok", streamed=True)
    assert record["thinking"] == "hmm hmm "
    assert (record["output_tokens"], record["tokens_estimated"]) == (4, False)


def test_ollama_generate_whole_and_streamed(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("ol-gen")
    client = opened.enter_context(ollama_client(gw, keys.main, project))

    whole = client.generate(
        "llama3", prompt=f"{project} [[tokens=2]]", system="be brief", suffix="end", stream=False
    )
    streamed = list(client.generate("llama3", prompt=f"{project} [[tokens=3]]", stream=True))

    assert whole.response == "w0 w1 "
    assert whole.context == [1, 2, 3]
    assert "".join(p.response for p in streamed) == "w0 w1 w2 "
    assert streamed[-1].done
    assert streamed[-1].context == [1, 2, 3]
    first, second = wait_records(admin, project, 2)
    assert_record(first, "ollama", "/api/generate", project, status="ok", output="w0 w1 ")
    assert first["input"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": f"{project} [[tokens=2]]"},
    ]
    assert_record(second, "ollama", "/api/generate", project, streamed=True, output_tokens=3)


def test_ollama_embed_list_show_ps(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("ol-embed")
    client = opened.enter_context(ollama_client(gw, keys.main, project))

    embedded = client.embed("llama3", input=["one two", "three"])
    legacy = client.embeddings("llama3", prompt="one two")
    listed = client.list()
    shown = client.show("llama3")
    running = client.ps()

    assert len(embedded.embeddings) == 2
    assert len(embedded.embeddings[0]) == 8
    assert embedded.prompt_eval_count == 3
    assert len(legacy.embedding) == 8
    assert "llama3:latest" in [m.model for m in listed.models]
    assert shown.details is not None
    assert shown.details.family == "llama"
    assert "llama3:latest" in [m.model for m in running.models]
    # The Python library has no version call; clients probe it without a key.
    assert httpx.get(gw.url + "/api/version").json() == {"version": "0.12.0"}
    embed, embeddings = wait_records(admin, project, 2)
    assert_record(embed, "ollama", "/api/embed", project, input_tokens=3, input_count=2)
    assert embed["output"] == ""
    assert "embedding" not in json.dumps(embed)
    assert_record(embeddings, "ollama", "/api/embeddings", project, input_count=1)


def test_ollama_errors_are_the_librarys_own(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("ol-err")
    client = opened.enter_context(ollama_client(gw, keys.main, project))
    stranger = opened.enter_context(ollama_client(gw, "ohk_00000000_not-a-key", project))

    with pytest.raises(ollama.ResponseError) as missing:
        client.chat("no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ollama.ResponseError) as missing_streamed:
        list(
            client.chat("no-such-model", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
    with pytest.raises(ollama.ResponseError) as unauthorized:
        stranger.chat("llama3", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ollama.ResponseError) as management:
        client.pull("llama3")

    assert missing.value.status_code == 404
    assert "not found" in missing.value.error
    assert missing_streamed.value.status_code == 404
    assert unauthorized.value.status_code == 401
    assert "not valid" in unauthorized.value.error
    assert management.value.status_code == 403
    assert "does not pass" in management.value.error
    # The missing model was asked for, so it is recorded; the others never reached a call.
    assert [r["status"] for r in wait_records(admin, project, 2)] == ["error", "error"]


def test_ollama_rate_limit_counts_every_front(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("ol-rpm")
    key = keys.make(label="main", limits={"rpm": 2})
    client = opened.enter_context(ollama_client(gw, key, project))
    with gw.client(admin=False) as seed:
        seed_ask = seed.post(
            "/api/v1/ai/ask_sync",
            json={"agent": "llama3", "content": "hi", "project": project},
            headers={"Authorization": f"Bearer {key}"},
        )
    client.chat("llama3", messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(ollama.ResponseError) as limited:
        client.chat("llama3", messages=[{"role": "user", "content": "hi"}])

    assert seed_ask.status_code == 200
    assert limited.value.status_code == 429
    assert [r["front"] for r in wait_records(admin, project, 2)] == ["seed", "ollama"]


def test_ollama_key_model_list_holds(gw: Gateway, keys: Keys, opened: contextlib.ExitStack) -> None:
    key = keys.make(label="main", models=["llama3"])
    client = opened.enter_context(ollama_client(gw, key, unique("ol-models")))

    with pytest.raises(ollama.ResponseError) as refused:
        client.chat("qwen", messages=[{"role": "user", "content": "hi"}])

    assert refused.value.status_code == 403
    assert [m.model for m in client.list().models] == ["llama3:latest"]


def test_ollama_break_mid_stream_cancels_upstream(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("ol-break")
    client = opened.enter_context(ollama_client(gw, keys.main, project))

    for part in client.chat(
        "llama3",
        messages=[{"role": "user", "content": f"{project} [[tokens=1000]] [[delay=0.02]]"}],
        stream=True,
    ):
        assert part.message.content == "w0 "
        break

    calls = standin.wait_for(
        lambda calls: all(c["disconnected"] for c in calls_with(calls, project))
    )
    [call] = calls_with(calls, project)
    assert not call["finished"]
    assert call["tokens_sent"] < 1000
    [record] = wait_records(admin, project, 1)
    assert_record(record, "ollama", "/api/chat", project, status="cancelled", streamed=True)


def test_a_keys_project_labels_calls_that_name_none(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    marker = unique("default-project")
    client = opened.enter_context(
        ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {keys.main}"})
    )

    client.chat("llama3", messages=[{"role": "user", "content": marker}])

    found = [r for r in records(admin, project="team-a") if r["input"][0]["content"] == marker]
    deadline = time.monotonic() + 10
    while not found and time.monotonic() < deadline:
        time.sleep(0.02)
        found = [r for r in records(admin, project="team-a") if r["input"][0]["content"] == marker]
    [record] = found
    assert (record["front"], record["key_label"]) == ("ollama", "main")


# -- the openai library --------------------------------------------------------------------------


def openai_client(gw: Gateway, key: str, project: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.url + "/v1", api_key=key, default_headers=labels(project), max_retries=0
    )


def test_openai_chat_whole_with_tools_images_and_a_schema(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("oa-chat")
    client = opened.enter_context(openai_client(gw, keys.main, project))
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()

    tools = client.chat.completions.create(
        model="llama3",
        messages=[{"role": "user", "content": f"{project} weather? [[tool_calls=1]]"}],
        tools=[WEATHER],
    )
    parsed = client.chat.completions.parse(
        model="llama3",
        messages=[
            {"role": "developer", "content": "answer in JSON"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"{project} look"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            },
        ],
        response_format=Forecast,
        max_completion_tokens=50,
        seed=7,
        stop=["\n\n"],
    )

    choice = tools.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "w0"}
    assert tools.usage is not None
    assert tools.usage.prompt_tokens == 3
    assert parsed.choices[0].message.parsed == Forecast(city="w0", degrees=1.5, sunny=True)
    seen = sent(standin, f"{project} look")
    assert seen["path"] == "/api/chat"
    assert [m["role"] for m in seen["body"]["messages"]] == ["system", "user"]
    assert seen["body"]["messages"][1]["images"] == [len(base64.b64encode(PNG))]
    assert seen["body"]["options"] == {
        "stop": ["\n\n"],
        "num_predict": 50,
        "temperature": 1.0,
        "seed": 7,
        "top_p": 1.0,
    }
    assert seen["body"]["format"]["properties"]["city"]["type"] == "string"
    first, second = wait_records(admin, project, 2)
    assert_record(first, "openai", "/v1/chat/completions", project, status="ok", streamed=False)
    assert first["tool_calls"][0]["function"]["name"] == "get_weather"
    assert second["input"][1] == {"role": "user", "content": f"{project} look", "images": 1}
    # Ollama's timings stay in the record, though OpenAI's reply has no place for them.
    assert second["load_seconds"] is not None
    assert second["prompt_eval_seconds"] is not None


def test_openai_chat_streamed_with_usage_and_tool_calls(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("oa-stream")
    client = opened.enter_context(openai_client(gw, keys.main, project))

    chunks = list(
        client.chat.completions.create(
            model="llama3",
            messages=[
                {"role": "user", "content": f"{project} [[tokens=3]] [[think=1]] [[tool_calls=1]]"}
            ],
            tools=[WEATHER],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == "w0 w1 w2 "
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert [(c.index, c.function and c.function.name) for c in calls] == [(0, "get_weather")]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 4)
    [record] = wait_records(admin, project, 1)
    assert_record(record, "openai", "/v1/chat/completions", project, streamed=True)
    # Thinking has no place in OpenAI's reply; the record keeps it.
    assert record["thinking"] == "hmm hmm "


def test_openai_completions_embeddings_and_models(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("oa-misc")
    client = opened.enter_context(openai_client(gw, keys.main, project))

    completion = client.completions.create(model="llama3", prompt=f"{project} [[tokens=2]]")
    streamed = list(
        client.completions.create(model="llama3", prompt=f"{project} [[tokens=3]]", stream=True)
    )
    # The library asks for base64 unless told otherwise, and decodes it.
    embedded = client.embeddings.create(model="llama3", input=["one two", "three"])
    as_floats = client.embeddings.create(model="llama3", input="one two", encoding_format="float")
    listed = client.models.list()
    model = client.models.retrieve("llama3")

    assert completion.choices[0].text == "w0 w1 "
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "w0 w1 w2 "
    assert [len(e.embedding) for e in embedded.data] == [8, 8]
    assert embedded.usage.prompt_tokens == 3
    assert embedded.data[0].embedding == pytest.approx(as_floats.data[0].embedding, abs=1e-6)
    assert "llama3:latest" in [m.id for m in listed]
    assert (model.id, model.owned_by) == ("llama3", "library")
    found = wait_records(admin, project, 4)
    assert [r["endpoint"] for r in found] == [
        "/v1/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/embeddings",
    ]
    assert_record(found[2], "openai", "/v1/embeddings", project, input_count=2, input_tokens=3)


def test_openai_errors_are_the_librarys_own(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("oa-err")
    client = opened.enter_context(openai_client(gw, keys.main, project))
    stranger = opened.enter_context(openai_client(gw, "ohk_00000000_not-a-key", project))
    limited = opened.enter_context(
        openai_client(gw, keys.make(label="main", limits={"rpm": 1}), project)
    )
    hi = [{"role": "user", "content": "hi"}]

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=hi)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="llama3", messages=hi)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as several:
        client.chat.completions.create(model="llama3", messages=hi, n=5)  # type: ignore[arg-type]
    limited.chat.completions.create(model="llama3", messages=hi)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as slow_down:
        limited.chat.completions.create(model="llama3", messages=hi)  # type: ignore[arg-type]

    assert missing.value.body == {
        "message": 'model "no-such-model" not found, try pulling it first',
        "type": "not_found_error",
        "param": None,
        "code": "model_not_found",
    }
    assert several.value.body["param"] == "n"  # type: ignore[index]
    assert int(slow_down.value.response.headers["retry-after"]) >= 1
    assert [r["status"] for r in wait_records(admin, project, 2)] == ["error", "ok"]


def test_openai_break_mid_stream_cancels_upstream(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("oa-break")
    client = opened.enter_context(openai_client(gw, keys.main, project))

    # As the openai library documents it: the stream as a context manager, which closes the
    # connection on the way out. A bare `break` leaves that to the garbage collector, which
    # may take longer than the wait below (seen once in CI-like runs: the upstream kept
    # streaming for 5 s).
    with client.chat.completions.create(
        model="llama3",
        messages=[{"role": "user", "content": f"{project} [[tokens=1000]] [[delay=0.02]]"}],
        stream=True,
    ) as stream:
        for chunk in stream:
            assert chunk.choices[0].delta.content == "w0 "
            break

    calls = standin.wait_for(
        lambda calls: all(c["disconnected"] for c in calls_with(calls, project))
    )
    [call] = calls_with(calls, project)
    assert not call["finished"]
    assert call["tokens_sent"] < 1000
    [record] = wait_records(admin, project, 1)
    assert_record(record, "openai", "/v1/chat/completions", project, status="cancelled")


@pytest.mark.anyio
async def test_async_openai_whole_streamed_and_break(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn
) -> None:
    project = unique("oa-async")
    client = openai.AsyncOpenAI(
        base_url=gw.url + "/v1", api_key=keys.main, default_headers=labels(project), max_retries=0
    )
    async with client:
        whole = await client.chat.completions.create(
            model="llama3", messages=[{"role": "user", "content": f"{project} [[tokens=2]]"}]
        )
        text = ""
        async for chunk in await client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": f"{project} [[tokens=3]]"}],
            stream=True,
        ):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        async with await client.chat.completions.create(
            model="llama3",
            messages=[
                {"role": "user", "content": f"{project} left [[tokens=1000]] [[delay=0.02]]"}
            ],
            stream=True,
        ) as stream:
            async for _ in stream:
                break
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="no-such-model", input="x")

    assert whole.choices[0].message.content == "w0 w1 "
    assert text == "w0 w1 w2 "
    marker = f"{project} left"
    standin.wait_for(lambda calls: all(c["disconnected"] for c in calls_with(calls, marker)))
    found = wait_records(admin, project, 4)
    assert [r["status"] for r in found] == ["ok", "ok", "cancelled", "error"]
    assert {r["front"] for r in found} == {"openai"}


def test_embedding_vectors_are_float32_in_base64(gw: Gateway, keys: Keys) -> None:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {keys.main}"}) as http:
        floats = http.post("/v1/embeddings", json={"model": "llama3", "input": "x"}).json()
        packed = http.post(
            "/v1/embeddings", json={"model": "llama3", "input": "x", "encoding_format": "base64"}
        ).json()

    raw = base64.b64decode(packed["data"][0]["embedding"])
    unpacked = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert unpacked == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
