"""The Responses front in-process: its bad input, its translation of input items into the
neutral call, and its place beside the OpenAI front's /v1/* routes and in the dashboard.

Every bad request is answered in OpenAI's error shape with `param` naming the field, status
400, never a 500, and leaves nothing behind: no record, no call upstream.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app import MODULES
from calls.errors import CallError
from routes.responses.schemas import ResponsesRequest
from routes.responses.translate import response_call
from tests.asgi import Local

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3", "input": "hi", **extra}


def items(*given: dict[str, Any]) -> dict[str, Any]:
    return body(input=list(given))


TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}

BAD: list[tuple[Any, str | None, str]] = [
    (b"{not json", None, "not valid JSON"),
    (body(previous_response_id="resp_1"), "previous_response_id", "stateless"),
    (body(store=True), "store", "stateless"),
    (body(conversation="conv_1"), "conversation", "stateless"),
    (body(background=True), "background", "stateless"),
    (body(tools=[{"type": "web_search"}]), "tools[0].type", "web_search"),
    (body(tools=[TOOL, {"type": "custom", "name": "x"}]), "tools[1].type", "custom"),
    (body(tools=[{"type": "function"}]), "tools[0].name", "name"),
    (items({"type": "item_reference", "id": "msg_1"}), "input[0].type", "stateless"),
    (items({"type": "computer_call_output"}), "input[0].type", "computer_call_output"),
    (items({"content": "no role"}), "input[0].role", "role"),
    (items({"role": "wizard", "content": "x"}), "input[0].role", "wizard"),
    (
        items({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}),
        "input[0].content[0].type",
        "input_file",
    ),
    (
        items({"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y"}]}),
        "input[0].content[0].image_url",
        "data: URL",
    ),
    (
        items({"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1"}),
        "input[0].arguments",
        "JSON object",
    ),
    (items({"type": "function_call", "call_id": "c"}), "input[0].name", "name"),
    (body(reasoning={"effort": "enormous"}), "reasoning.effort", "enormous"),
    (body(text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema", "schema"),
    (body(text={"format": {"type": "yaml"}}), "text.format.type", "yaml"),
    (body(max_output_tokens=0), "max_output_tokens", ">= 1"),
    (body(surprise=1), "surprise", "surprise"),
    (body(model="../etc/passwd"), "model", "model"),
]


@pytest.mark.parametrize(("sent", "param", "says"), BAD)
async def test_bad_input_is_a_400_in_openais_shape_naming_the_param(
    local: Local, sent: Any, param: str | None, says: str
) -> None:
    async with local.client() as client:
        if isinstance(sent, bytes):
            response = await client.post("/v1/responses", content=sent)
        else:
            response = await client.post("/v1/responses", json=sent)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert says in error["message"]
    async with local.client() as admin:
        assert (await admin.get("/api/v1/admin/dashboard")).json() == []


def translated(sent: dict[str, Any]) -> list[dict[str, Any]]:
    call = response_call(msgspec.convert(sent, ResponsesRequest))
    return [msgspec.to_builtins(m) for m in call.messages]


def test_items_become_the_conversation_in_order() -> None:
    sent = items(
        {"type": "message", "role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "look it up"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": '{"tz":1}'},
        {"type": "function_call_output", "call_id": "c2", "output": "noon"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [{"type": "input_text", "text": "sunny"}],
        },
        {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny at noon."}]},
    ) | {"instructions": "You are a gateway test."}

    assert translated(sent) == [
        {"role": "system", "content": "You are a gateway test."},
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "thinking": "look it up",
            "tool_calls": [
                {"function": {"name": "get_weather"}, "id": "c1"},
                {"function": {"name": "get_time", "arguments": {"tz": 1}}, "id": "c2"},
            ],
        },
        {"role": "tool", "content": "noon", "tool_name": "get_time", "tool_call_id": "c2"},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "c1"},
        {"role": "assistant", "content": "Sunny at noon."},
    ]


def test_options_format_think_and_tools_reach_the_neutral_call() -> None:
    call = response_call(
        msgspec.convert(
            body(
                max_output_tokens=64,
                top_p=0.5,
                seed=3,
                reasoning={"effort": "high", "summary": "auto"},
                text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
                tools=[TOOL | {"description": "does f", "strict": True}],
                store=False,
            ),
            ResponsesRequest,
        )
    )

    generation = call.generation
    assert generation.options == {"num_predict": 64, "temperature": 1.0, "seed": 3, "top_p": 0.5}
    assert generation.format == {"type": "object"}
    assert generation.think == "high"
    assert generation.tools == [
        {
            "type": "function",
            "function": {"name": "f", "description": "does f", "parameters": {"type": "object"}},
        }
    ]
    assert call.messages == response_call(msgspec.convert(body(), ResponsesRequest)).messages
    json_mode = body(text={"format": {"type": "json_object"}})
    assert response_call(msgspec.convert(json_mode, ResponsesRequest)).generation.format == "json"


def test_tool_choice_none_offers_no_tools() -> None:
    sent = body(tools=[TOOL], tool_choice="none")
    assert response_call(msgspec.convert(sent, ResponsesRequest)).generation.tools is None
    sent = body(tools=[TOOL], tool_choice="auto")
    assert response_call(msgspec.convert(sent, ResponsesRequest)).generation.tools


def test_refusing_store_only_when_asked_to_keep() -> None:
    for store in (None, False):
        response_call(msgspec.convert(body(store=store), ResponsesRequest))
    with pytest.raises(CallError):
        response_call(msgspec.convert(body(store=True), ResponsesRequest))


async def test_the_openai_fronts_paths_and_its_404_are_unchanged_beside_it(local: Local) -> None:
    async with local.client() as client:
        answered = await client.post("/v1/responses", json=body(input="hi [[tokens=2]]"))
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
        )
        nowhere = await client.post("/v1/responses/resp_1/cancel", json={})
        retrieve = await client.get("/v1/responses/resp_1")
        wrong_method = await client.get("/v1/responses")

    assert answered.status_code == 200
    assert answered.json()["output"][0]["content"][0]["text"] == "w0 w1 "
    assert chat.status_code == 200
    for response, status in ((nowhere, 404), (retrieve, 404), (wrong_method, 405)):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    async with local.client() as admin:
        found = (await admin.get("/api/v1/admin/dashboard")).json()
    assert sorted(r["front"] for r in found) == ["openai", "responses"]


def test_the_dashboards_front_filter_lists_every_front_once() -> None:
    """The page's front filter is the one hand-written list of fronts: it must name each
    front package's FRONT, and nothing else."""
    page = (ROOT / "static" / "dashboard.html").read_text()
    select = re.search(r'<select name="front">(.*?)</select>', page, re.S)
    assert select is not None
    listed = re.findall(r'<option value="([^"]*)">', select.group(1))
    fronts = [m.FRONT for m in MODULES if hasattr(m, "FRONT")]
    assert listed[0] == ""
    assert sorted(listed[1:]) == sorted(fronts)
    assert len(set(listed)) == len(listed)
    assert "responses" in fronts


async def test_a_streamed_answer_is_the_responses_event_stream(aclient: httpx.AsyncClient) -> None:
    response = await aclient.post("/v1/responses", json=body(input="hi [[tokens=2]]", stream=True))

    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b]
    kinds = [b.split("\n", 1)[0].removeprefix("event: ") for b in blocks]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    datas = [msgspec.json.decode(b.split("\ndata: ", 1)[1]) for b in blocks]
    assert [d["type"] for d in datas] == kinds
    assert [d["sequence_number"] for d in datas] == list(range(len(kinds)))
    assert datas[-1]["response"]["usage"]["output_tokens"] == 2
