"""The `openai` library's Responses API, unchanged, against a real gateway in front of the
stand-in: `responses.create` whole and streamed, the stream helper, a function tool round
trip, structured output, and the library's own exceptions for what the gateway refuses.

Each test checks what the client sees, what the gateway recorded (front `responses`, tokens,
labels) and, where it matters, what reached the stand-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.responses import FunctionToolParam

from tests.gateway_proc import ROOT, Gateway
from tests.helpers import Keys, calls_with, labels, unique, wait_records
from tests.ollama_standin import StandIn
from tests.real_clients import codex, loopback_only, vercel_openai

pytestmark = pytest.mark.server

WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}


class Forecast(pydantic.BaseModel):
    city: str
    degrees: float
    sunny: bool


@pytest.fixture(scope="module")
def key(gateway_keys: tuple[Gateway, Keys]) -> str:
    """A key that accounts to "team-r" when a call names none."""
    return gateway_keys[1].make(label="main", project="team-r")


def client_of(gw: Gateway, key: str, project: str, stack: contextlib.ExitStack) -> openai.OpenAI:
    client = openai.OpenAI(
        base_url=gw.url + "/v1", api_key=key, default_headers=labels(project), max_retries=0
    )
    return stack.enter_context(client)


def assert_record(record: dict[str, Any], project: str, **fields: Any) -> None:
    assert record["front"] == "responses"
    assert record["endpoint"] == "/v1/responses"
    assert record["project"] == project
    assert (record["process_id"], record["subprocess_id"]) == ("proc-1", "sub-2")
    assert record["key_label"] == "main"
    for name, value in fields.items():
        assert record[name] == value, (name, record)


def test_whole_response_with_instructions_options_and_structured_output(
    gw: Gateway, key: str, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("rs-whole")
    client = client_of(gw, key, project, opened)

    plain = client.responses.create(
        model="llama3",
        instructions="Be brief.",
        input=f"{project} hello [[tokens=3]]",
        max_output_tokens=40,
        temperature=0.5,
        store=False,
    )
    parsed = client.responses.parse(
        model="llama3",
        input=[{"role": "user", "content": f"{project} forecast"}],
        text_format=Forecast,
    )

    assert plain.status == "completed"
    assert plain.output_text == "w0 w1 w2 "
    assert plain.id.startswith("resp_")
    assert plain.usage is not None
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (5, 3)
    assert plain.usage.total_tokens == 8
    assert parsed.output_parsed == Forecast(city="w0", degrees=1.5, sunny=True)
    [seen] = calls_with(standin.calls(), f"{project} hello")
    assert seen["path"] == "/api/chat"
    assert [m["role"] for m in seen["body"]["messages"]] == ["system", "user"]
    assert seen["body"]["messages"][0]["content"] == "Be brief."
    assert seen["body"]["options"] == {"num_predict": 40, "temperature": 0.5, "top_p": 1.0}
    [schema_call] = calls_with(standin.calls(), f"{project} forecast")
    assert schema_call["body"]["format"]["properties"]["sunny"]["type"] == "boolean"
    first, second = wait_records(admin, project, 2)
    assert_record(first, project, status="ok", streamed=False, input_tokens=5, output_tokens=3)
    assert first["output"] == "w0 w1 w2 "
    assert_record(second, project, status="ok")


def test_function_tool_round_trip(
    gw: Gateway, key: str, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("rs-tool")
    client = client_of(gw, key, project, opened)
    asked: list[Any] = [{"role": "user", "content": f"{project} weather? [[tool_calls=1]]"}]

    first = client.responses.create(model="llama3", input=asked, tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    # As OpenAI's guide does it: the answer's output items go back as input, then the result.
    turn: list[Any] = [*asked, *first.output]
    turn.append(
        {"type": "function_call_output", "call_id": call.call_id, "output": f"{project} 21C"}
    )
    answer = client.responses.create(model="llama3", input=turn, tools=[WEATHER])

    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "w0"}
    assert call.call_id
    assert answer.output_text
    [seen] = calls_with(standin.calls(), f"{project} 21C")
    user, assistant, tool = seen["body"]["messages"]
    assert user["role"] == "user"
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "w0"},
    }
    assert tool == {"role": "tool", "content": f"{project} 21C", "tool_name": "get_weather"} | {
        k: v for k, v in tool.items() if k == "tool_call_id"
    }
    assert seen["body"]["tools"][0]["function"]["name"] == "get_weather"
    found = wait_records(admin, project, 2)
    assert found[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert [r["status"] for r in found] == ["ok", "ok"]


def test_streamed_response_events_in_order_with_usage(
    gw: Gateway, key: str, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("rs-stream")
    client = client_of(gw, key, project, opened)

    events = list(
        client.responses.create(
            model="llama3",
            input=f"{project} [[tokens=3]] [[tool_calls=1]]",
            tools=[WEATHER],
            stream=True,
        )
    )

    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "w0 w1 w2 "
    [arguments] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(arguments.arguments) == {"city": "w0"}
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    done = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert added == done == list(range(len(added)))
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.usage is not None
    assert (last.response.usage.input_tokens, last.response.usage.output_tokens) == (3, 4)
    assert last.response.output_text == "w0 w1 w2 "
    [record] = wait_records(admin, project, 1)
    assert_record(record, project, streamed=True, status="ok", input_tokens=3, output_tokens=4)


def test_stream_helper_accumulates_the_final_response(
    gw: Gateway, key: str, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("rs-helper")
    client = client_of(gw, key, project, opened)

    with client.responses.stream(
        model="llama3", input=f"{project} [[tokens=4]] [[thinking=2]]", reasoning={"effort": "low"}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()

    assert "".join(deltas) == "w0 w1 w2 w3 "
    assert final.output_text == "w0 w1 w2 w3 "
    reasoning = [item for item in final.output if item.type == "reasoning"]
    assert reasoning
    [record] = wait_records(admin, project, 1)
    assert record["thinking"] == "t0 t1 "


def test_a_cut_off_answer_is_incomplete(
    gw: Gateway, key: str, opened: contextlib.ExitStack
) -> None:
    project = unique("rs-short")
    client = client_of(gw, key, project, opened)

    whole = client.responses.create(
        model="llama3", input=f"{project} [[tokens=10]]", max_output_tokens=2
    )
    events = list(
        client.responses.create(
            model="llama3", input=f"{project} [[tokens=10]]", max_output_tokens=2, stream=True
        )
    )

    assert whole.status == "incomplete"
    assert whole.incomplete_details is not None
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == "w0 w1 "


def test_refusals_are_the_librarys_own_errors(
    gw: Gateway, key: str, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("rs-err")
    client = client_of(gw, key, project, opened)
    stranger = client_of(gw, "ohk_00000000_not-a-key", project, opened)

    with pytest.raises(openai.BadRequestError) as previous:
        client.responses.create(model="llama3", input="hi", previous_response_id="resp_1")
    with pytest.raises(openai.BadRequestError) as stored:
        client.responses.create(model="llama3", input="hi", store=True)
    with pytest.raises(openai.BadRequestError) as search:
        client.responses.create(model="llama3", input="hi", tools=[{"type": "web_search"}])
    with pytest.raises(openai.BadRequestError) as item:
        client.responses.create(
            model="llama3",
            input=[{"type": "item_reference", "id": "msg_1"}],
        )
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.NotFoundError):
        # Streamed: the upstream refused before anything was sent, so it is a status too.
        client.responses.create(model="no-such-model", input="hi", stream=True)
    with pytest.raises(openai.AuthenticationError):
        stranger.responses.create(model="llama3", input="hi")
    with gw.client() as admin_client:
        made = admin_client.post(
            "/api/v1/admin/keys", json={"label": "main", "limits": {"rpm": 1}}
        ).json()["key"]
    limited = client_of(gw, made, project, opened)
    limited.responses.create(model="llama3", input="hi [[tokens=1]]")
    with pytest.raises(openai.RateLimitError) as slow_down:
        limited.responses.create(model="llama3", input="hi [[tokens=1]]")

    assert previous.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert "stateless" in previous.value.message
    assert stored.value.body["param"] == "store"  # type: ignore[index]
    assert search.value.body["param"] == "tools[0].type"  # type: ignore[index]
    assert item.value.body["param"] == "input[0].type"  # type: ignore[index]
    assert int(slow_down.value.response.headers["retry-after"]) >= 1
    # Refused before reaching the upstream: no record. The missing model is recorded (twice),
    # and the limited key's one call.
    missing, missing_streamed, allowed = wait_records(admin, project, 3)
    assert_record(missing, project, status="error")
    assert_record(missing_streamed, project, status="error", streamed=True)
    assert_record(allowed, project, status="ok")


def test_a_failure_mid_stream_is_response_failed(
    gw: Gateway, key: str, admin: httpx.Client, opened: contextlib.ExitStack
) -> None:
    project = unique("rs-fail")
    client = client_of(gw, key, project, opened)

    events = list(
        client.responses.create(
            model="llama3", input=f"{project} [[tokens=5]] [[error_after=2]]", stream=True
        )
    )

    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error is not None
    assert events[-1].response.output_text == "w0 w1 "
    [record] = wait_records(admin, project, 1)
    assert_record(record, project, status="error", streamed=True)


def test_break_mid_stream_cancels_upstream(
    gw: Gateway, key: str, admin: httpx.Client, standin: StandIn, opened: contextlib.ExitStack
) -> None:
    project = unique("rs-break")
    client = client_of(gw, key, project, opened)

    with client.responses.create(
        model="llama3", input=f"{project} [[tokens=1000]] [[delay=0.02]]", stream=True
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break

    calls = standin.wait_for(
        lambda calls: all(c["disconnected"] for c in calls_with(calls, project))
    )
    [call] = calls_with(calls, project)
    assert not call["finished"]
    assert call["tokens_sent"] < 1000
    [record] = wait_records(admin, project, 1)
    assert_record(record, project, status="cancelled")


def test_codex_exec_answers_through_the_gateway(tmp_path: Path) -> None:
    """`codex exec` with the gateway as its provider (`wire_api = "responses"`), inside a
    network namespace with nothing but loopback (tests/codex_smoke.py)."""
    entry = codex()
    smoke = [sys.executable, "-m", "tests.codex_smoke", str(entry), str(tmp_path)]
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
    # Codex prints the agent's last message on stdout: the stand-in's three tokens.
    assert result["stdout"].strip() == "w0 w1 w2"
    [record] = result["records"]
    assert (record["front"], record["endpoint"], record["status"]) == (
        "responses",
        "/v1/responses",
        "ok",
    )
    assert record["streamed"] is True
    assert record["output_tokens"] == 3
    [call] = result["upstream"]
    # Codex's developer messages arrive as system ones, its function tools as tools.
    roles = [m["role"] for m in call["body"]["messages"]]
    assert roles[0] == "system"
    assert roles[-1] == "user"
    assert "exec_command" in [t["function"]["name"] for t in call["body"]["tools"]]


def test_the_vercel_ai_sdks_default_openai_provider_works_unchanged(
    gw: Gateway, key: str, admin: httpx.Client
) -> None:
    """`createOpenAI({baseURL})(model)` asks /v1/responses first: whole, streamed, a tool."""
    ai, provider = vercel_openai()
    project = unique("rs-vercel")
    done = subprocess.run(
        ["node", str(ROOT / "tests" / "vercel_responses_smoke.mjs")],
        env={
            **os.environ,
            "AI": ai.as_uri(),
            "PROVIDER": provider.as_uri(),
            "GATEWAY": gw.url,
            "KEY": key,
            "PROJECT": project,
            "MODEL": "llama3",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [name for name, got in seen.items() if "error" in got], seen
    assert seen["text"]["text"] == "w0 w1 w2 "
    assert seen["text"]["finishReason"] == "stop"
    assert seen["text"]["usage"]["outputTokens"] == 3
    assert seen["text streamed"]["text"] == "w0 w1 w2 w3 "
    assert seen["text streamed"]["usage"]["outputTokens"] == 4
    assert seen["tool call"]["toolCalls"] == [{"name": "get_weather", "input": {"city": "w0"}}]
    assert seen["tool call"]["finishReason"] == "tool-calls"
    found = wait_records(admin, project, 3)
    assert {(r["front"], r["endpoint"], r["status"]) for r in found} == {
        ("responses", "/v1/responses", "ok")
    }
