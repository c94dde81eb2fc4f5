"""Anthropic's Messages front in-process: bad input, keys, the translation that reaches each
kind of upstream, and the event sequence.

Every bad request is answered in Anthropic's shape with its status and error type, never a
500, and leaves nothing behind: no record, no call upstream.
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
from tests.asgi import Keyed, Local, in_process
from tests.helpers import arecords
from tests.test_fronts import nothing_left

pytestmark = pytest.mark.anyio

IMAGE = "iVBORw0KGgo="
IMAGE_BLOCK = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": IMAGE},
}
WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def speaking(local: Local, *, admin: bool = True) -> httpx.AsyncClient:
    """A client of the in-process gateway that sends `anthropic-version`, as the SDKs do."""
    client = local.client(admin=admin)
    client.headers["anthropic-version"] = "2023-06-01"
    return client


def message(*content: Any, **extra: Any) -> dict[str, Any]:
    """A body of one user turn: its text, or its blocks."""
    turn: Any = content[0] if len(content) == 1 and isinstance(content[0], str) else list(content)
    return {
        "model": "llama3",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": turn}],
        **extra,
    }


def anthropic_error(response: httpx.Response, status: int, kind: str, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    assert body["request_id"] == response.headers["request-id"]
    for word in words:
        assert word in body["error"]["message"]


def tool_turns(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A tool call, then its result."""
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "x"}}
    return [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]


BAD: list[tuple[Any, str]] = [
    (b'{"model": ', "not valid JSON"),
    ({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, "`max_tokens`"),
    (message("hi", max_tokens=0), "$.max_tokens"),
    (message("hi", messages=[]), "$.messages"),
    (message("hi", model="../etc/passwd"), "$.model"),
    (message("hi", temperature=2), "$.temperature"),
    (
        message({"type": "document", "source": {"type": "text", "data": "x"}}),
        "messages.0.content.0.type: 'document' is not a type this API takes (content blocks",
    ),
    (message({"type": "frobnicate"}), "'frobnicate' is not a type"),
    (
        message({"type": "image", "source": {"type": "file", "file_id": "f"}}),
        "messages.0.content.0.source.type: 'file' is not a type this API takes",
    ),
    (
        message("hi", messages=tool_turns({"type": "tool_result", "tool_use_id": "toolu_9"})),
        "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9",
    ),
    (
        # A result answers the message just before it, not an older one.
        message(
            "hi",
            messages=[
                *tool_turns({"type": "tool_result", "tool_use_id": "toolu_1"}),
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
            ],
        ),
        "toolu_1",
    ),
    (
        message({"type": "tool_use", "id": "toolu_1", "name": "x", "input": {}}),
        "`tool_use` blocks belong in an assistant message",
    ),
    (
        message({"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}}),
        "image URLs are not supported",
    ),
    (
        message(
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%"}}
        ),
        "messages.0.content.0.source.data: the image is not valid base64",
    ),
    (
        message(
            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": ""}}
        ),
        "media_type",
    ),
    (
        message("hi", thinking={"type": "enabled", "budget_tokens": 2048}),
        "`max_tokens` must be greater than `thinking.budget_tokens`",
    ),
    (message("hi", thinking={"type": "enabled", "budget_tokens": 10}), "budget_tokens"),
    (message("hi", tools=[{"name": "x"}]), "tools.0.input_schema: Field required"),
    (message("hi", tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (message("hi", system=5), "$.system"),
    (message("hi", system=[{"text": "x"}]), "$.system[0]"),
    (message("hi", output_config={"format": {"schema": {}}}), "$.output_config.format"),
    (
        message("hi", messages=[{"role": "system", "content": [IMAGE_BLOCK]}]),
        "messages.0.content.0: a system message takes text blocks only",
    ),
]


@pytest.mark.parametrize(("body", "says"), BAD)
async def test_bad_input_is_a_400_invalid_request_error(local: Local, body: Any, says: str) -> None:
    async with speaking(local) as client:
        if isinstance(body, bytes):
            response = await client.post("/v1/messages", content=body)
        else:
            response = await client.post("/v1/messages", json=body)

    anthropic_error(response, 400, "invalid_request_error", says)
    await nothing_left(local)


@pytest.mark.parametrize(
    ("version", "says"),
    [
        (None, "anthropic-version: header is required"),
        ("2024-13-01", "'2024-13-01' is not a version of this API"),
    ],
)
async def test_the_anthropic_version_header_is_checked_as_anthropic_does(
    local: Local, version: str | None, says: str
) -> None:
    headers = {} if version is None else {"anthropic-version": version}
    async with local.client() as client:
        asked = await client.post("/v1/messages", json=message("hi"), headers=headers)
        counted = await client.post(
            "/v1/messages/count_tokens", json=message("hi"), headers=headers
        )

    anthropic_error(asked, 400, "invalid_request_error", says)
    anthropic_error(counted, 400, "invalid_request_error", says)
    await nothing_left(local)


async def test_a_missing_model_and_a_wrong_method_in_anthropics_shape(local: Local) -> None:
    async with speaking(local) as client:
        missing = await client.post("/v1/messages", json=message("hi", model="nope"))
        get = await client.get("/v1/messages")

    anthropic_error(missing, 404, "not_found_error", '"nope" not found')
    anthropic_error(get, 405, "invalid_request_error")


async def test_keys_by_x_api_key_or_bearer(keyed: Keyed) -> None:
    local = keyed.local
    team, qwen = keyed.keys["team"]["key"], keyed.keys["qwen-only"]["key"]
    async with speaking(local, admin=False) as client:
        nobody = await client.post("/v1/messages", json=message("hi"))
        with_user_id = await client.post(
            "/v1/messages", json=message("hi", metadata={"user_id": "u-1"})
        )
        wrong = await client.post("/v1/messages", json=message("hi"), headers={"x-api-key": "x"})
        by_header = await client.post(
            "/v1/messages", json=message("hi"), headers={"x-api-key": team}
        )
        by_bearer = await client.post(
            "/v1/messages", json=message("hi"), headers={"Authorization": f"Bearer {team}"}
        )
        not_this_model = await client.post(
            "/v1/messages", json=message("hi"), headers={"x-api-key": qwen}
        )

    anthropic_error(nobody, 401, "authentication_error", "x-api-key header is required")
    anthropic_error(with_user_id, 401, "authentication_error", "x-api-key header is required")
    anthropic_error(wrong, 401, "authentication_error", "not valid")
    assert by_header.status_code == by_bearer.status_code == 200
    anthropic_error(not_this_model, 403, "permission_error", "llama3")
    async with local.client() as admin:
        found = await arecords(admin)
    assert [r["key_label"] for r in found] == ["team", "team"]
    assert {r["front"] for r in found} == {"anthropic"}


async def test_metadata_user_id_groups_calls_while_no_key_exists(local: Local) -> None:
    async with speaking(local, admin=False) as client:
        for who in ("u-1", "u-1", "u-2"):
            response = await client.post(
                "/v1/messages", json=message("hi", metadata={"user_id": who})
            )
            assert response.status_code == 200, response.text
    async with local.client() as admin:
        third, second, first = await arecords(admin)

    assert first["user"] == second["user"] != third["user"]
    assert first["user"] is not None
    assert "u-1" not in json.dumps(first)


async def echoed(local: Local, body: dict[str, Any]) -> dict[str, Any]:
    """What reached the Ollama stand-in besides the prompt ([[echo=1]]), and the messages."""
    async with speaking(local) as client:
        response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    [call] = await local.standin_calls()
    seen: dict[str, Any] = json.loads(response.json()["content"][0]["text"])
    seen["messages"] = call["body"]["messages"]
    return seen


async def test_what_reaches_ollama(local: Local) -> None:
    body = message(
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}},
        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "[[echo=1]]"},
        system=[{"type": "text", "text": "be brief"}],
        tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
        thinking={"type": "disabled"},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
        context_management={"edits": []},
    )

    seen = await echoed(local, body)

    assert seen["think"] is False
    assert seen["format"] == {"type": "object"}
    assert seen["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]},
        }
    ]
    assert seen["options"] == {"num_predict": 100, "temperature": 1.0}
    assert seen["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "look\n[[echo=1]]", "images": [len(IMAGE)]},
    ]


async def test_tool_choice_none_asks_without_tools(local: Local) -> None:
    seen = await echoed(local, message("[[echo=1]]", tools=[WEATHER], tool_choice={"type": "none"}))

    assert "tools" not in seen


async def test_a_tool_result_with_images_is_a_tool_message(local: Local) -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "is_error": True,
        "content": [
            {"type": "text", "text": "no such city"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": IMAGE},
            },
        ],
    }
    turns = tool_turns(result)
    turns[-1]["content"].append({"type": "text", "text": "[[echo=1]]"})

    seen = await echoed(local, message("hi", messages=turns))

    assert seen["messages"][1:] == [
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "toolu_1", "function": {"name": "get_weather", "arguments": {"city": "x"}}}
            ],
        },
        {
            "role": "tool",
            "content": "no such city",
            "images": [len(IMAGE)],
            "tool_name": "get_weather",
            "tool_call_id": "toolu_1",
        },
        {"role": "user", "content": "[[echo=1]]"},
    ]


def events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """A whole SSE response's named events and their data."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    out = []
    for chunk in response.text.split("\n\n"):
        if chunk.strip():
            name, data = chunk.split("\n")
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def test_a_stream_has_one_block_per_kind_in_order(local: Local) -> None:
    body = message("[[thinking=2]] [[tokens=2]]", stream=True, tools=[WEATHER])
    tools = message("[[tool_calls=1]] [[tokens=1]]", stream=True, tools=[WEATHER])
    async with speaking(local) as client:
        thought = events(await client.post("/v1/messages", json=body))
        called = events(await client.post("/v1/messages", json=tools))

    assert [name for name, _ in thought] == [
        "message_start",
        "ping",
        *("content_block_start", "content_block_delta", "content_block_delta"),
        "content_block_stop",
        *("content_block_start", "content_block_delta", "content_block_delta"),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in thought)
    assert thought[2][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert thought[3][1]["delta"] == {"type": "thinking_delta", "thinking": "t0 "}
    assert thought[6][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "text", "text": ""},
    }
    assert thought[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert thought[-2][1]["usage"] == {"input_tokens": 2, "output_tokens": 2}
    start = [data for name, data in called if name == "content_block_start"]
    assert start[1]["content_block"]["type"] == "tool_use"
    assert start[1]["content_block"]["name"] == "get_weather"
    [arguments] = [
        data["delta"]["partial_json"]
        for name, data in called
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    ]
    assert json.loads(arguments) == {"city": "w0"}
    assert called[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_a_failure_mid_stream_is_an_error_event(local: Local) -> None:
    async with speaking(local) as client:
        response = await client.post("/v1/messages", json=message("[[error_after=1]]", stream=True))

    found = events(response)
    assert found[-1][0] == "error"
    assert found[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in found]


@pytest.fixture
async def openai_kind(tmp_path: Path) -> AsyncIterator[tuple[Local, Any]]:
    """A gateway whose one upstream is the OpenAI stand-in, in this process."""
    app = openai_standin.create_app(["smollm2"])
    upstream = OpenAIUpstream(
        httpx.ASGITransport(app=app), "http://llama.test:8080/v1", name="llama"
    )
    async with in_process(tmp_path / "data", upstream=upstream) as local:
        yield local, app


async def test_an_openai_kind_upstream_is_asked_by_chat_completions(
    openai_kind: tuple[Local, Any],
) -> None:
    local, app = openai_kind
    turns = tool_turns({"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"})
    turns[-1]["content"].append({"type": "text", "text": "[[tokens=2]] [[think=1]]"})
    body = message("hi", model="smollm2", messages=turns, system="be brief", tools=[WEATHER])
    async with speaking(local) as client:
        whole = await client.post("/v1/messages", json=body)
        streamed = await client.post("/v1/messages", json={**body, "stream": True})
        counted = await client.post(
            "/v1/messages/count_tokens",
            json={k: v for k, v in body.items() if k != "max_tokens"},
        )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://llama.test") as standin:
        calls = (await standin.get("/_standin/calls")).json()

    assert whole.status_code == 200, whole.text
    reply = whole.json()
    assert [b["type"] for b in reply["content"]] == ["thinking", "text"]
    assert reply["content"][1]["text"] == "o0 o1 "
    assert [name for name, _ in events(streamed)][-2:] == ["message_delta", "message_stop"]
    assert counted.json() == {"input_tokens": reply["usage"]["input_tokens"]}
    sent = calls[0]["body"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert sent["messages"][3]["tool_call_id"] == "toolu_1"
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["max_tokens"] == 100 or sent.get("max_completion_tokens") == 100


async def test_system_messages_among_the_turns_as_claude_code_sends_them(local: Local) -> None:
    turns = tool_turns({"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"})
    # Between the call and its result, too.
    turns.insert(2, {"role": "system", "content": [{"type": "text", "text": "be nice"}]})
    turns.append({"role": "user", "content": "[[echo=1]]"})

    seen = await echoed(local, message("hi", messages=turns, system="be brief"))

    assert [(m["role"], m.get("content")) for m in seen["messages"]] == [
        ("system", "be brief"),
        ("user", "weather?"),
        ("assistant", None),
        ("system", "be nice"),
        ("tool", "sunny"),
        ("user", "[[echo=1]]"),
    ]
