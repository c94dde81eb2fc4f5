"""The `anthropic` Python SDK, unchanged, against a real gateway in front of the stand-in.

Pointed at the gateway's base URL with an API key (`x-api-key`, as the SDK sends it), as
Claude Code's users point `ANTHROPIC_BASE_URL`. Each test checks what the SDK sees (its own
types and exceptions), what the gateway recorded (front, endpoint, tokens, labels) and, where
it matters, what reached the stand-in.
"""

from __future__ import annotations

import base64
import contextlib
import socket
from pathlib import Path
from typing import Any

import anthropic
import httpx
import msgspec
import pytest
from anthropic.types import MessageParam, ToolParam

from tests.gateway_proc import Gateway, free_port, start_gateway
from tests.helpers import Keys, calls_with, labels, unique, wait_records
from tests.ollama_standin import StandIn, start_standin
from tests.openai_standin import start_openai_standin
from tests.test_clients import PNG, assert_record, sent

pytestmark = pytest.mark.server

WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client_of(gw: Gateway, key: str, project: str, *, bearer: bool = False) -> anthropic.Anthropic:
    """The SDK as a user sets it up; with `bearer`, the key as Claude Code's
    ANTHROPIC_AUTH_TOKEN sends it."""
    if bearer:
        return anthropic.Anthropic(
            base_url=gw.url, auth_token=key, default_headers=labels(project), max_retries=0
        )
    return anthropic.Anthropic(
        base_url=gw.url, api_key=key, default_headers=labels(project), max_retries=0
    )


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


def test_a_whole_message_with_system_blocks_and_metadata(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("an-whole")
    client = opened.enter_context(client_of(gw, keys.main, project))

    message = client.messages.create(
        model="llama3",
        max_tokens=100,
        system=[{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}],
        messages=user(f"{project} [[tokens=3]]"),
        stop_sequences=["END"],
        metadata={"user_id": "someone"},
        # The API takes them; the SDK's own parameters no longer name them.
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 20},
    )

    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_")
    assert message.model == "llama3"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "w0 w1 w2 "  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (6, 3)
    seen = sent(standin, project)
    assert seen["path"] == "/api/chat"
    assert seen["body"]["messages"][0] == {"role": "system", "content": "be brief\nbe kind"}
    assert seen["body"]["options"] == {
        "num_predict": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "stop": ["END"],
    }
    [record] = wait_records(admin, project, 1)
    assert_record(record, "anthropic", "/v1/messages", project, status="ok", streamed=False)
    assert (record["input_tokens"], record["output_tokens"]) == (6, 3)
    assert record["input"][0] == {"role": "system", "content": "be brief\nbe kind"}
    assert record["output"] == "w0 w1 w2 "


def test_a_streamed_message_is_anthropics_event_sequence(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("an-stream")
    client = opened.enter_context(client_of(gw, keys.main, project))

    with client.messages.stream(
        model="llama3", max_tokens=100, messages=user(f"{project} [[tokens=4]]")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    raw = client.messages.create(
        model="llama3", max_tokens=100, messages=user(f"{project} [[tokens=2]]"), stream=True
    )
    kinds = [event.type for event in raw]

    assert text == "w0 w1 w2 w3 "
    assert final.id == "msg_" + stream.response.headers["x-request-id"]
    assert stream.response.headers["request-id"] == stream.response.headers["x-request-id"]
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 4)
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    first, second = wait_records(admin, project, 2)
    assert_record(first, "anthropic", "/v1/messages", project, status="ok", streamed=True)
    assert (first["output"], first["output_tokens"], first["tokens_estimated"]) == (
        "w0 w1 w2 w3 ",
        4,
        False,
    )
    assert second["output_tokens"] == 2


def test_tools_with_a_tool_result_turn_whole_and_streamed(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("an-tools")
    client = opened.enter_context(client_of(gw, keys.main, project))
    ask = user(f"{project} weather? [[tool_calls=1]] [[tokens=0]]")

    called = client.messages.create(model="llama3", max_tokens=50, messages=ask, tools=[WEATHER])
    with client.messages.stream(
        model="llama3", max_tokens=50, messages=ask, tools=[WEATHER]
    ) as stream:
        streamed = stream.get_final_message()
    [use] = called.content
    assert use.type == "tool_use"
    answered = client.messages.create(
        model="llama3",
        max_tokens=50,
        tools=[WEATHER],
        messages=[
            *ask,
            {"role": "assistant", "content": called.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21"},
                    {"type": "text", "text": f"{project} so? [[tokens=2]]"},
                ],
            },
        ],
    )

    assert (use.name, use.input) == ("get_weather", {"city": "w0"})
    assert called.stop_reason == "tool_use"
    [streamed_use] = streamed.content
    assert streamed_use.type == "tool_use"
    assert (streamed_use.name, streamed_use.input) == ("get_weather", {"city": "w0"})
    assert streamed.stop_reason == "tool_use"
    assert answered.content[0].text == "w0 w1 "  # type: ignore[union-attr]
    assert answered.stop_reason == "end_turn"
    seen = sent(standin, f"{project} so?")
    assert seen["body"]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]
    conversation = seen["body"]["messages"]
    assert [m["role"] for m in conversation] == ["user", "assistant", "tool", "user"]
    assert conversation[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "w0"},
    }
    assert conversation[2]["content"] == "sunny, 21"
    assert conversation[2]["tool_name"] == "get_weather"
    records = wait_records(admin, project, 3)
    assert records[0]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "w0"}}}
    ]
    assert [r["streamed"] for r in records] == [False, True, False]


def test_thinking_whole_and_streamed(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("an-think")
    client = opened.enter_context(client_of(gw, keys.main, project))
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}

    whole = client.messages.create(
        model="llama3",
        max_tokens=2048,
        thinking=thinking,
        messages=user(f"{project} [[thinking=2]] [[tokens=2]]"),
    )
    with client.messages.stream(
        model="llama3",
        max_tokens=2048,
        thinking=thinking,
        messages=user(f"{project} [[thinking=3]] [[tokens=1]]"),
    ) as stream:
        thoughts = [e.thinking for e in stream if e.type == "thinking"]
        final = stream.get_final_message()

    assert [b.type for b in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == "t0 t1 "  # type: ignore[union-attr]
    assert whole.content[1].text == "w0 w1 "  # type: ignore[union-attr]
    assert thoughts == ["t0 ", "t1 ", "t2 "]
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "t0 t1 t2 "  # type: ignore[union-attr]
    assert all(c["body"]["think"] is True for c in calls_with(standin.calls(), project))
    first, second = wait_records(admin, project, 2)
    assert (first["thinking"], second["thinking"]) == ("t0 t1 ", "t0 t1 t2 ")


def test_an_image_reaches_the_upstream_as_base64(
    gw: Gateway, keys: Keys, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("an-image")
    client = opened.enter_context(client_of(gw, keys.main, project))
    data = base64.b64encode(PNG).decode()

    message = client.messages.create(
        model="llama3",
        max_tokens=20,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": data},
                    },
                    {"type": "text", "text": f"{project} what is it? [[tokens=1]]"},
                ],
            }
        ],
    )

    assert message.content[0].text == "w0 "  # type: ignore[union-attr]
    seen = sent(standin, project)
    assert seen["body"]["messages"][0]["images"] == [len(data)]


def test_count_tokens_is_the_upstreams_own_count(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("an-count")
    client = opened.enter_context(client_of(gw, keys.main, project))
    asked = user(f"{project} one two three")

    counted = client.messages.count_tokens(model="llama3", system="be brief", messages=asked)
    message = client.messages.create(
        model="llama3", max_tokens=5, system="be brief", messages=asked
    )

    assert counted.input_tokens == message.usage.input_tokens == 6
    first, _ = wait_records(admin, project, 2)
    assert_record(first, "anthropic", "/v1/messages/count_tokens", project, input_tokens=6)


def test_models_list_pages_and_retrieve(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    """The SDK's `models.list()` walks the pages by `after_id` (and back by `before_id`), and
    `models.retrieve()` gets one ModelInfo; a key limited to one model sees that one only."""
    project = unique("an-models")
    client = opened.enter_context(client_of(gw, keys.main, project))
    limited = opened.enter_context(client_of(gw, keys.make(label="q", models=["qwen"]), project))
    names = [m["id"] for m in admin.get("/v1/models").json()["data"]]

    walked = list(client.models.list(limit=1))
    first_page = client.models.list(limit=2)
    back = client.models.list(limit=2, before_id=names[-1])
    one = client.models.retrieve("llama3")
    only_qwen = [m.id for m in limited.models.list()]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.models.retrieve("nope")
    with pytest.raises(anthropic.PermissionDeniedError):
        limited.models.retrieve("llama3")
    with pytest.raises(anthropic.BadRequestError):
        client.models.list(limit=0)

    assert len(names) > 2
    assert [m.id for m in walked] == names
    assert all(isinstance(m, anthropic.types.ModelInfo) for m in walked)
    assert (walked[0].type, walked[0].display_name, walked[0].lifecycle) == (
        "model",
        names[0],
        "active",
    )
    assert walked[0].created_at.tzinfo is not None
    assert (first_page.has_more, first_page.first_id, first_page.last_id) == (
        True,
        names[0],
        names[1],
    )
    assert [m.id for m in back.data] == names[-3:-1]
    assert (one.id, one.type, one.max_input_tokens) == ("llama3", "model", 8192)
    assert only_qwen == [n for n in names if n.startswith("qwen")]
    assert missing.value.status_code == 404
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_a_bearer_token_as_claude_codes_auth_token(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("an-bearer")
    client = opened.enter_context(client_of(gw, keys.main, project, bearer=True))

    message = client.messages.create(model="llama3", max_tokens=5, messages=user(project))

    assert message.stop_reason == "max_tokens"  # the stand-in's 8 tokens, cut at 5
    [record] = wait_records(admin, project, 1)
    assert_record(record, "anthropic", "/v1/messages", project, status="ok")


def test_errors_are_the_sdks_own(
    gw: Gateway, keys: Keys, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("an-err")
    client = opened.enter_context(client_of(gw, keys.main, project))
    stranger = opened.enter_context(client_of(gw, "ohk_00000000_not-a-key", project))
    limited = opened.enter_context(
        client_of(gw, keys.make(label="main", limits={"rpm": 1}), project)
    )
    hi = user("hi")

    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=5, messages=hi)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=5, messages=hi, stream=True)
    with pytest.raises(anthropic.AuthenticationError) as who:
        stranger.messages.create(model="llama3", max_tokens=5, messages=hi)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="llama3",
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}],
                }
            ],
        )
    limited.messages.create(model="llama3", max_tokens=5, messages=hi)
    with pytest.raises(anthropic.RateLimitError) as slow_down:
        limited.messages.create(model="llama3", max_tokens=5, messages=hi)

    assert missing.value.body == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": 'model "no-such-model" not found, try pulling it first',
        },
        "request_id": missing.value.request_id,
    }
    assert missing.value.type == "not_found_error"
    assert who.value.type == "authentication_error"
    assert bad.value.type == "invalid_request_error"
    assert "toolu_x" in bad.value.message
    assert slow_down.value.type == "rate_limit_error"
    assert int(slow_down.value.response.headers["retry-after"]) >= 1
    # The missing model (whole and streamed) and the limited key's first call.
    assert [r["status"] for r in wait_records(admin, project, 3)] == ["error", "error", "ok"]


def test_leaving_a_stream_cancels_the_upstream(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("an-break")
    client = opened.enter_context(client_of(gw, keys.main, project))

    with client.messages.stream(
        model="llama3", max_tokens=5000, messages=user(f"{project} [[tokens=1000]] [[delay=0.02]]")
    ) as stream:
        for text in stream.text_stream:
            assert text == "w0 "
            break

    calls = standin.wait_for(
        lambda calls: all(c["disconnected"] for c in calls_with(calls, project))
    )
    [call] = calls_with(calls, project)
    assert not call["finished"]
    assert call["tokens_sent"] < 1000
    [record] = wait_records(admin, project, 1)
    assert_record(record, "anthropic", "/v1/messages", project, status="cancelled")


def test_a_dead_upstream_is_failed_over_whole_and_streamed(tmp_path: Path) -> None:
    project = unique("an-failover")
    with start_standin() as spare, start_standin() as first:
        flags = ["--upstream", f"a={first.url},weight=100", "--upstream", f"b={spare.url}"]
        with start_gateway(tmp_path / "data", *flags, "--health-interval", "60") as gw:
            first.stop()  # a, which the weights prefer, is gone; the gateway has not checked
            client = client_of(gw, "unused", project)
            with client:
                whole = client.messages.create(model="llama3", max_tokens=5, messages=user("hi"))
                with client.messages.stream(
                    model="llama3", max_tokens=5, messages=user("hi")
                ) as stream:
                    streamed = stream.get_final_message()
            with gw.client() as admin:
                found = wait_records(admin, project, 2)

    texts = [m.content[0].text for m in (whole, streamed)]  # type: ignore[union-attr]
    assert texts == ["w0 w1 w2 w3 w4 "] * 2
    assert [r["upstream"] for r in found] == ["b", "b"]
    assert found[0]["attempts"] == 2  # a first, refused, then b


def test_a_whole_message_left_by_its_client_is_cancelled(
    gw: Gateway, keys: Keys, admin: httpx.Client, standin: StandIn
) -> None:
    project = unique("an-leave")
    body = msgspec.json.encode(
        {"model": "llama3", "max_tokens": 50, "messages": user(f"{project} [[stall=0]]")}
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"anthropic-version: 2023-06-01\r\nx-api-key: %s\r\nX-Project: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (keys.main.encode(), project.encode(), len(body), body)
        )
        standin.wait_for(lambda calls: bool(calls_with(calls, project)))

    standin.wait_for(lambda calls: all(c["disconnected"] for c in calls_with(calls, project)))
    [record] = wait_records(admin, project, 1)
    assert (record["status"], record["front"], record["endpoint"]) == (
        "cancelled",
        "anthropic",
        "/v1/messages",
    )


def test_an_openai_compatible_upstream_whole_streamed_tools_and_thinking(tmp_path: Path) -> None:
    """The same SDK against the OpenAI-compatible stand-in (llama-server, vLLM): asked by
    Chat Completions, its reasoning as thinking, its tool call as a tool_use block."""
    project = unique("an-oa")
    with (
        start_openai_standin(port=free_port(), models=["smollm2"]) as standin,
        start_gateway(tmp_path / "data", "--upstream", f"s={standin.url}/v1,kind=openai") as gw,
        client_of(gw, "unused", project) as client,
    ):
        whole = client.messages.create(
            model="smollm2", max_tokens=50, messages=user("hi [[tokens=3]] [[think=2]]")
        )
        with client.messages.stream(
            model="smollm2", max_tokens=50, tools=[WEATHER], messages=user("[[tool=get_weather]]")
        ) as stream:
            called = stream.get_final_message()
        with gw.client() as admin:
            found = wait_records(admin, project, 2)

    assert [b.type for b in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == "r0 r1 "  # type: ignore[union-attr]
    assert whole.content[1].text == "o0 o1 o2 "  # type: ignore[union-attr]
    text, use = called.content
    assert text.type == "text"
    assert use.type == "tool_use"
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    assert called.stop_reason == "tool_use"
    assert [(r["front"], r["upstream"], r["status"]) for r in found] == [
        ("anthropic", "s", "ok"),
        ("anthropic", "s", "ok"),
    ]
