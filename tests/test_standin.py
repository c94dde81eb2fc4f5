"""The Ollama stand-in and the SSE parser that the other tests rely on."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.ollama_standin import DEFAULT_MODELS, TRICKY_TOKENS, start_standin
from tests.sse import SSEEvent, SSEParser, parse_sse

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.ollama_standin import StandIn


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with start_standin() as server:
        yield server


@pytest.fixture
def ollama(standin: StandIn) -> Iterator[httpx.Client]:
    """A client for the stand-in, with an empty call log."""
    standin.reset()
    with httpx.Client(base_url=standin.url, timeout=10.0, trust_env=False) as client:
        yield client


def chat(content: str, *, model: str = "llama3", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# --------------------------------------------------------------------------- stand-in

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_generate_streams_response_lines_and_ends_with_context(ollama: httpx.Client) -> None:
    response = ollama.post("/api/generate", json={"model": "llama3", "prompt": "hi [[tokens=2]]"})

    lines = ndjson(response.text)
    assert [line["response"] for line in lines] == ["w0 ", "w1 ", ""]
    assert lines[-1]["done"] is True
    assert lines[-1]["context"] == [1, 2, 3]
    assert "message" not in lines[0]


def test_tool_calls_come_in_a_chunk_of_their_own(ollama: httpx.Client) -> None:
    body = chat("weather [[tokens=1]] [[tool_calls=1]]", tools=[WEATHER])

    lines = ndjson(ollama.post("/api/chat", json=body).text)
    whole = ollama.post("/api/chat", json={**body, "stream": False}).json()

    call = {"function": {"name": "get_weather", "arguments": {"city": "w0"}}}
    assert lines[1]["message"] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert whole["message"]["tool_calls"] == [call]
    assert ollama.post("/api/chat", json=chat("[[tool_calls=1]]")).status_code == 400


def test_format_answers_an_instance_of_the_schema(ollama: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a"]}},
        },
    }

    whole = ollama.post("/api/chat", json=chat("x", format=schema, stream=False)).json()

    assert json.loads(whole["message"]["content"]) == {"n": 1, "tags": ["a"]}


def test_echo_and_the_call_log_show_what_arrived(ollama: httpx.Client, standin: StandIn) -> None:
    body = chat("[[echo=1]]", options={"seed": 3}, keep_alive="1m", stream=False)
    body["messages"][0]["images"] = ["aGVsbG8="]

    echoed = json.loads(ollama.post("/api/chat", json=body).json()["message"]["content"])

    assert echoed["options"] == {"seed": 3}
    assert echoed["keep_alive"] == "1m"
    assert echoed["images"] == [1]
    [call] = standin.calls()
    assert call["body"]["messages"][0]["images"] == [8]


def test_images_must_be_base64(ollama: httpx.Client) -> None:
    body = chat("x", stream=False)
    body["messages"][0]["images"] = ["not base64!"]

    response = ollama.post("/api/chat", json=body)

    assert response.status_code == 400
    assert "base64" in response.json()["error"]


def test_embed_gives_unit_vectors_and_embeddings_one_vector(ollama: httpx.Client) -> None:
    embed = ollama.post("/api/embed", json={"model": "llama3", "input": ["a b", "c"]}).json()
    short = ollama.post("/api/embed", json={"model": "llama3", "input": "a", "dimensions": 3})
    huge = ollama.post("/api/embed", json={"model": "llama3", "input": "a", "dimensions": 10**9})
    legacy = ollama.post("/api/embeddings", json={"model": "llama3", "prompt": "a b"}).json()
    missing = ollama.post("/api/embed", json={"model": "nope", "input": "a"})

    assert [len(v) for v in embed["embeddings"]] == [8, 8]
    assert sum(x * x for x in embed["embeddings"][0]) == pytest.approx(1.0)
    assert embed["prompt_eval_count"] == 3
    assert len(short.json()["embeddings"][0]) == 3
    assert len(huge.json()["embeddings"][0]) == 8
    assert len(legacy["embedding"]) == 8
    assert missing.status_code == 404


def test_tags_lists_models(ollama: httpx.Client) -> None:
    response = ollama.get("/api/tags")
    assert response.status_code == 200
    models = response.json()["models"]
    assert [m["name"] for m in models] == DEFAULT_MODELS
    first = models[0]
    assert set(first) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert len(first["digest"]) == 64
    assert first["details"]["format"] == "gguf"
    assert ollama.get("/api/version").json() == {"version": "0.12.0"}


def test_streamed_chat_lines_and_final_metrics(ollama: httpx.Client, standin: StandIn) -> None:
    body = chat("hello there [[tokens=3]]", options={"temperature": 0})
    response = ollama.post("/api/chat", json=body)  # stream defaults to true
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response.text)
    assert [line["message"] for line in lines[:-1]] == [
        {"role": "assistant", "content": token} for token in ("w0 ", "w1 ", "w2 ")
    ]
    assert all(line["done"] is False and line["model"] == "llama3" for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 3
    assert final["prompt_eval_count"] == 3  # "hello", "there", "[[tokens=3]]"
    durations = [final[key] for key in ("total_duration", "load_duration", "eval_duration")]
    assert all(isinstance(ns, int) and ns > 0 for ns in durations)
    assert final["total_duration"] >= final["load_duration"] + final["prompt_eval_duration"]

    # The stand-in marks a call ended just after its last byte: the client can be faster.
    [call] = standin.wait_for(lambda calls: len(calls) == 1 and calls[0]["ended"] is not None)
    assert call["model"] == "llama3"
    assert call["stream"] is True
    assert call["options"] == {"temperature": 0}
    assert call["tokens_sent"] == 3
    assert call["finished"] is True
    assert call["disconnected"] is False
    assert call["ended"] >= call["started"]


def test_load_is_reported_in_nanoseconds(ollama: httpx.Client) -> None:
    response = ollama.post("/api/chat", json=chat("[[tokens=1]] [[load=0.05]]"))
    final = ndjson(response.text)[-1]
    # The event loop's timers fire to within a millisecond, sometimes early.
    assert final["load_duration"] >= 49_000_000


def test_num_predict_limits_with_done_reason_length(ollama: httpx.Client) -> None:
    body = chat("[[tokens=5]]", options={"num_predict": 2}, stream=False)
    reply = ollama.post("/api/chat", json=body).json()
    assert reply["message"]["content"] == "w0 w1 "
    assert reply["eval_count"] == 2
    assert reply["done_reason"] == "length"


def test_non_streamed_chat(ollama: httpx.Client, standin: StandIn) -> None:
    response = ollama.post("/api/chat", json=chat("[[tokens=3]] [[think=1]]", stream=False))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    reply = response.json()
    assert reply["message"] == {"role": "assistant", "content": "w0 w1 w2 ", "thinking": "hmm hmm "}
    assert reply["done"] is True
    assert reply["eval_count"] == 3
    [call] = standin.calls()
    assert call["stream"] is False
    assert call["finished"] is True


def test_nometrics_omits_every_metric(ollama: httpx.Client) -> None:
    reply = ollama.post("/api/chat", json=chat("[[nometrics=1]]", stream=False)).json()
    assert set(reply) == {"model", "created_at", "message", "done", "done_reason"}


def test_unknown_model_is_404_with_ollamas_message(ollama: httpx.Client) -> None:
    response = ollama.post("/api/chat", json=chat("hi", model="nope"))
    assert response.status_code == 404
    assert response.json() == {"error": 'model "nope" not found, try pulling it first'}
    missing = ollama.post("/api/chat", json={"messages": []})
    assert missing.status_code == 400
    assert missing.json() == {"error": "model is required"}
    invalid = ollama.post("/api/chat", content=b"{not json")
    assert invalid.status_code == 400
    assert "error" in invalid.json()


def test_status_directive(ollama: httpx.Client) -> None:
    response = ollama.post("/api/chat", json=chat("[[status=503]]"))
    assert response.status_code == 503
    assert response.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }


def test_error_after_ends_stream_without_done_line(ollama: httpx.Client, standin: StandIn) -> None:
    response = ollama.post("/api/chat", json=chat("[[tokens=5]] [[error_after=2]]"))
    assert response.status_code == 200
    lines = ndjson(response.text)
    assert len(lines) == 3
    assert [line["message"]["content"] for line in lines[:2]] == ["w0 ", "w1 "]
    assert lines[2] == {"error": "runner crashed after 2 tokens"}
    assert not any(line.get("done") for line in lines)
    [call] = standin.calls()
    assert call["tokens_sent"] == 2
    assert call["finished"] is False


def test_stall_then_hang_up_is_recorded(ollama: httpx.Client, standin: StandIn) -> None:
    with ollama.stream("POST", "/api/chat", json=chat("[[tokens=5]] [[stall=1]]")) as response:
        # Keep the iterator referenced: dropping a half-used httpx line iterator closes the
        # connection at once (httpcore closes it on GeneratorExit).
        lines = response.iter_lines()
        assert json.loads(next(lines))["message"]["content"] == "w0 "
        assert standin.open_streams() == 1
        assert standin.calls()[0]["disconnected"] is False
    # Leaving the block closes the half-read response, which closes the connection.
    [call] = standin.wait_for(lambda calls: bool(calls) and calls[0]["disconnected"])
    assert call["tokens_sent"] == 1
    assert call["finished"] is False
    assert call["disconnected_at"] >= call["started"]
    # A hang-up ends the call at once: no race with the rest of the server's handler.
    assert call["ended"] >= call["disconnected_at"]
    assert standin.open_streams() == 0


def test_tricky_tokens_round_trip(ollama: httpx.Client) -> None:
    response = ollama.post("/api/chat", json=chat("[[tricky=1]]"))
    lines = ndjson(response.text)
    assert [line["message"]["content"] for line in lines[:-1]] == TRICKY_TOKENS
    assert lines[-1]["eval_count"] == len(TRICKY_TOKENS)


# --------------------------------------------------------------------------- SSE parser


def test_sse_multiline_data_and_default_type() -> None:
    assert parse_sse("data: a\ndata:b\ndata\n\n") == [
        SSEEvent(event="message", data="a\nb\n", id="", retry=None)
    ]


def test_sse_crlf_and_lone_cr_line_endings() -> None:
    events = parse_sse("event: x\r\ndata: 1\r\n\r\ndata: 2\r\rdata: 3\n\n")
    assert [(e.event, e.data) for e in events] == [("x", "1"), ("message", "2"), ("message", "3")]


def test_sse_chunk_split_between_cr_and_lf() -> None:
    parser = SSEParser()
    assert parser.feed("data: a\r") == []
    # This LF completes the CRLF above: it is not the blank line that would dispatch.
    assert parser.feed("\ndata: b\r") == []
    assert parser.feed("\n\r") == [SSEEvent("message", "a\nb", "", None)]
    assert parser.feed("\ndata: c\n\n") == [SSEEvent("message", "c", "", None)]


def test_sse_any_split_gives_the_same_events() -> None:
    text = "retry: 10\nid: 1\r\nevent: e\rdata: x\r\n\r\n: ping\n\ndata:  y\n\n"
    whole = parse_sse(text)
    for size in range(1, 6):
        parser = SSEParser()
        events = [e for i in range(0, len(text), size) for e in parser.feed(text[i : i + size])]
        assert events == whole
        assert parser.comments == ["ping"]


def test_sse_comments_are_recorded_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(": keep-alive\n\n:\n\n") == []
    assert parser.comments == ["keep-alive", ""]


def test_sse_last_event_id_persists() -> None:
    events = parse_sse("id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: x\0y\ndata: d\n\n")
    assert [e.id for e in events] == ["7", "7", "", ""]


def test_sse_event_without_data_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed("event: ping\nid: 3\nretry: 5\n\n") == []
    # The id and retry still took effect; the event type did not carry over.
    assert parser.last_event_id == "3"
    assert parser.retry == 5
    assert parser.feed("data: z\n\n") == [SSEEvent("message", "z", "3", None)]


def test_sse_retry_digits_only() -> None:
    assert parse_sse("retry: 1x\ndata: a\n\nretry: 20\ndata: b\n\n") == [
        SSEEvent("message", "a", "", None),
        SSEEvent("message", "b", "", 20),
    ]


def test_sse_only_one_leading_space_is_stripped() -> None:
    [event] = parse_sse("data:  two spaces\ndata:none\n\n")
    assert event.data == " two spaces\nnone"
    assert parse_sse("data: unterminated\n") == []


@pytest.mark.anyio
async def test_a_memory_budget_loads_and_unloads_models_as_ollama_does() -> None:
    from tests.ollama_standin import _Model, create_app

    sizes = {name: _Model.make(name).size for name in ("llama3", "qwen", "mistral")}
    # Room for any two of them, never for all three.
    memory = sum(sizes.values()) - min(sizes.values()) // 2
    app = create_app(memory=memory, load_seconds=0.05)
    transport = httpx.ASGITransport(app=app)

    async def ask(client: httpx.AsyncClient, model: str, **options: Any) -> float:
        body = chat("hi", model=model, stream=False)
        if options:
            body["options"] = options
        reply = (await client.post("/api/chat", json=body)).json()
        return float(reply["load_duration"]) / 1e9

    async def loaded(client: httpx.AsyncClient) -> dict[str, int]:
        models = (await client.get("/api/ps")).json()["models"]
        return {m["name"].split(":")[0]: m["context_length"] for m in models}

    async with httpx.AsyncClient(transport=transport, base_url="http://standin") as client:
        cold = await ask(client, "llama3")
        warm = await ask(client, "llama3")
        await ask(client, "qwen")
        both = await loaded(client)
        await ask(client, "mistral")  # llama3 was used least recently: it goes
        after = await loaded(client)
        reloaded = await ask(client, "qwen", num_ctx=8192)  # another context: a reload
        contexts = await loaded(client)

    assert cold >= 0.05 > warm
    assert set(both) == {"llama3", "qwen"}
    assert set(after) == {"qwen", "mistral"}
    assert reloaded >= 0.05
    assert contexts == {"qwen": 8192, "mistral": 4096}
