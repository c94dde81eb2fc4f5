"""routes/seed.py: the seed's contract, request by request, in process through
httpx.ASGITransport (the stand-in answering in process too), and its pieces on their own.

Streams as a client reads them off a socket (flushing, keep-alives, hang-ups) are in
test_streaming.py, against a real gateway process.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest

import upstreams
from calls.errors import CallError
from calls.events import Done, Failed, Pieces, Started
from calls.types import Message, Metrics, Piece
from ollama_client import OllamaUpstream
from ollama_host.settings import parse_settings
from routes.seed.framing import SeedEvents
from routes.seed.handlers import wants_json
from routes.seed.schemas import AskRequest
from routes.seed.translate import call_of
from store import UsageRecord
from tests import ollama_standin
from tests.asgi import STANDIN_URL, Local, gateway_log, in_process, unreachable
from tests.helpers import aonly_record, arecords, ask, assert_error, calls_with, data, unique
from tests.sse import parse_sse

pytestmark = pytest.mark.anyio

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"

SEED_FIELDS = [
    "date",
    "total_seconds",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "model_name",
    "input",
    "output",
    "project",
    "process_id",
    "subprocess_id",
]


# -- models and asking ------------------------------------------------------------------


async def test_models_lists_ollama_names(aclient: httpx.AsyncClient) -> None:
    response = await aclient.get("/api/v1/ai/models")

    assert response.status_code == 200
    assert response.json() == [
        "llama3:latest",
        "qwen:latest",
        "mistral:latest",
        "custom-model:latest",
    ]


async def test_ask_sync_answers_plain_text(aclient: httpx.AsyncClient) -> None:
    response = await aclient.post(SYNC, json=ask(content="Explain [[tokens=3]]", project=unique()))

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "w0 w1 w2 "


async def test_ask_sync_answers_json_when_asked(aclient: httpx.AsyncClient) -> None:
    body = ask(content="one two [[tokens=4]]", template="Be brief.", project=unique())

    response = await aclient.post(SYNC, json=body, headers={"Accept": "application/json"})

    assert response.status_code == 200
    reply = response.json()
    assert reply["output"] == "w0 w1 w2 w3 "
    assert reply["model"] == "llama3"
    assert reply["id"] == response.headers["x-request-id"]
    usage = reply["usage"]
    # The stand-in counts prompt words over all messages: "Be brief." + "one two [[tokens=4]]".
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (5, 4, 9)
    assert usage["status"] == "ok"
    assert usage["tokens_estimated"] is False


@pytest.mark.parametrize(
    ("accept", "json_reply"),
    [
        ("text/plain", False),
        ("*/*", False),
        ("application/json, text/plain;q=0.5", True),
        ("text/plain;q=0.2, application/json", True),
        ("text/html", False),
    ],
)
async def test_ask_sync_negotiates(
    aclient: httpx.AsyncClient, accept: str, json_reply: bool
) -> None:
    response = await aclient.post(SYNC, json=ask(project=unique()), headers={"Accept": accept})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        "application/json" if json_reply else "text/plain"
    )


class Spy(httpx.AsyncBaseTransport):
    """A transport that keeps every body the upstream answered with."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        self.bodies.append(body)
        return httpx.Response(response.status_code, headers=response.headers, content=body)


@pytest.fixture
async def spied(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Spy]]:
    """A client of the gateway in this process, whose stand-in's answers are kept."""
    spy = Spy(httpx.ASGITransport(app=ollama_standin.create_app()))
    upstream = OllamaUpstream(spy, STANDIN_URL)
    async with in_process(tmp_path / "data", upstream=upstream) as local, local.client() as client:
        yield client, spy


async def test_every_call_gets_one_record_with_the_seed_fields(
    spied: tuple[httpx.AsyncClient, Spy],
) -> None:
    aclient, spy = spied
    project = unique()
    before = datetime.now(UTC)
    body = ask(
        content="Explique a teoria [[tokens=5]] [[load=0.25]]",
        template="Você é um assistente educado e técnico.",
        user_key="111111122",
        project=project,
        process_id="001",
        subprocess_id="002",
    )

    response = await aclient.post(SYNC, json=body)

    assert response.status_code == 200
    record = await aonly_record(aclient, project)
    assert list(record)[: len(SEED_FIELDS)] == SEED_FIELDS
    assert record["id"] == response.headers["x-request-id"]
    assert record["status"] == "ok"
    assert record["streamed"] is False
    assert record["model_name"] == "llama3"
    assert record["input"] == [
        {"role": "system", "content": "Você é um assistente educado e técnico."},
        {"role": "user", "content": "Explique a teoria [[tokens=5]] [[load=0.25]]"},
    ]
    assert record["output"] == "w0 w1 w2 w3 w4 "
    assert (record["project"], record["process_id"], record["subprocess_id"]) == (
        project,
        "001",
        "002",
    )
    assert (record["input_tokens"], record["output_tokens"], record["total_tokens"]) == (12, 5, 17)
    date = datetime.fromisoformat(record["date"])
    assert date.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= date <= datetime.now(UTC)
    # Seconds, not nanoseconds; Ollama's own load time converted at the edge. (Exactly what the
    # stand-in reported, which is at least the load asked for; it measures its sleep, which a
    # busy machine makes longer, so "0.25 s give or take 10 ms" failed now and then.)
    assert 0.25 <= record["total_seconds"] < 60
    # A whole answer is asked for as a stream (so --timeout is per byte): its last line.
    (reply,) = [
        msgspec.json.decode(line)
        for body in spy.bodies
        for line in body.splitlines()
        if b"load_duration" in line
    ]
    assert reply["load_duration"] >= 250_000_000
    assert record["load_seconds"] == reply["load_duration"] / 1e9
    assert record["prompt_eval_seconds"] is not None
    assert record["eval_seconds"] is not None
    assert record["ttft_seconds"] is None  # a whole answer has no first token to time


async def test_user_key_is_stored_as_a_fingerprint(
    local: Local, aclient: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    project = unique()
    key = "sk-very-secret-4242"
    for _ in range(2):
        await aclient.post(SYNC, json=ask(user_key=key, project=project))

    first, second = await arecords(aclient, project=project)

    assert first["user"] == second["user"]
    assert re.fullmatch(r"fp_[0-9a-f]{20}", first["user"])
    await local.gateway.store.flush()
    for path in local.data.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="replace"), path
    assert key not in gateway_log(caplog.records)


async def test_a_stream_ends_with_done_and_its_record(aclient: httpx.AsyncClient) -> None:
    project = unique()

    response = await aclient.post(STREAM, json=ask(content="hi [[tokens=2]]", project=project))

    events = parse_sse(response.text)
    assert response.status_code == 200
    assert [e.event for e in events] == ["start", "token", "token", "done"]
    done = data(events[-1])
    assert (done["id"], done["status"]) == (response.headers["x-request-id"], "ok")
    record = await aonly_record(aclient, project)
    assert (record["streamed"], record["output"]) == (True, "w0 w1 ")


# -- what the seed refuses --------------------------------------------------------------


@pytest.mark.parametrize("path", [SYNC, STREAM])
@pytest.mark.parametrize("body", [b"{not json", b'{"agent": "llama3", "content": "x"', b"", b"   "])
async def test_malformed_json_is_400(aclient: httpx.AsyncClient, path: str, body: bytes) -> None:
    response = await aclient.post(path, content=body, headers={"Content-Type": "application/json"})

    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("path", [SYNC, STREAM])
@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"content": "hi"}, "agent"),
        ({"agent": "llama3"}, "content"),
        ({"agent": "llama3", "content": 5}, "$.content"),
        ({"agent": "llama3", "content": ""}, "$.content"),
        ({"agent": "llama3", "content": "hi", "project": ["a"]}, "$.project"),
        ({"agent": "../../etc/passwd", "content": "hi"}, "$.agent"),
        ({"agent": "evil.host:8080/x", "content": "hi"}, "$.agent"),
        ({"agent": "", "content": "hi"}, "$.agent"),
        (["llama3", "hi"], "object"),
    ],
)
async def test_wrong_fields_are_422_with_the_path(
    aclient: httpx.AsyncClient, path: str, body: object, where: str
) -> None:
    response = await aclient.post(path, json=body)

    error = assert_error(response, 422, "invalid_request")
    assert where in error["message"]


async def test_wrong_query_fields_are_422(aclient: httpx.AsyncClient) -> None:
    response = await aclient.get(STREAM, params={"content": "hi"})

    error = assert_error(response, 422, "invalid_request")
    assert "agent" in error["message"]


async def test_a_query_parameter_given_twice_is_422(aclient: httpx.AsyncClient) -> None:
    response = await aclient.get(STREAM, params=[("agent", "llama3"), ("agent", "qwen")])

    error = assert_error(response, 422, "invalid_request")
    assert "`agent`" in error["message"]


async def test_prompt_over_the_limit_is_413(guarded: Local) -> None:
    async with guarded.client() as client:
        response = await client.post(SYNC, json=ask(content="x" * 400, template="y" * 101))

    assert_error(response, 413, "prompt_too_large")


async def test_model_name_length_is_limited(guarded: Local) -> None:
    async with guarded.client() as client:
        response = await client.post(SYNC, json=ask("m" * 201))

    assert_error(response, 422, "invalid_request")


async def test_the_upstream_address_never_comes_from_a_request(guarded: Local) -> None:
    marker = unique("ssrf")
    body = {
        **ask(content=marker, project=unique()),
        "api_base": "http://169.254.169.254",
        "ollama": "x",
    }
    async with guarded.client() as client:
        response = await client.post(SYNC, json=body)

    assert response.status_code == 200
    assert calls_with(await guarded.standin_calls(), marker)


async def test_eventsource_reconnect_gets_204_and_asks_nothing(local: Local) -> None:
    marker = unique("reconnect")
    async with local.client() as client:
        response = await client.get(
            STREAM, params={"agent": "llama3", "content": marker}, headers={"Last-Event-ID": "4"}
        )

    assert response.status_code == 204
    assert calls_with(await local.standin_calls(), marker) == []


# -- when Ollama fails ------------------------------------------------------------------


async def test_unknown_model_is_404_with_ollamas_message(aclient: httpx.AsyncClient) -> None:
    project = unique()

    response = await aclient.post(SYNC, json=ask("mystery", project=project))

    error = assert_error(response, 404, "model_not_found")
    assert error["message"] == 'model "mystery" not found, try pulling it first'
    record = await aonly_record(aclient, project)
    assert error["request_id"] == record["id"] == response.headers["x-request-id"]
    assert record["status"] == "error"
    assert record["error"] == error["message"]


@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [
        ("[[status=503]]", 503, "upstream_busy"),
        ("[[status=500]]", 502, "upstream_error"),
        ("[[status=400]]", 400, "upstream_rejected"),
        ("[[error_after=1]]", 502, "upstream_error"),
        ("[[garbage=1]]", 502, "upstream_bad_response"),
    ],
)
async def test_ollama_failures(
    aclient: httpx.AsyncClient, directive: str, status: int, code: str
) -> None:
    project = unique()

    response = await aclient.post(SYNC, json=ask(content=directive, project=project))

    assert_error(response, status, code)
    if status == 503:
        assert response.headers["retry-after"].isdigit()
    record = await aonly_record(aclient, project)
    assert (record["status"], record["error_code"]) == ("error", code)


@pytest.fixture
async def down(tmp_path: Path) -> AsyncIterator[tuple[Local, str]]:
    """A gateway in this process whose Ollama address has nothing listening, and that address:
    the real transport, refused by the operating system."""
    async with unreachable(tmp_path / "data") as (local, address):
        yield local, address


@pytest.mark.parametrize("path", [SYNC, STREAM, "/api/v1/ai/models"])
async def test_unreachable_ollama_is_502_naming_the_address(
    down: tuple[Local, str], path: str
) -> None:
    local, address = down

    async with local.client() as client:
        response = await client.request(
            "GET" if path.endswith("models") else "POST", path, json=ask()
        )

    error = assert_error(response, 502, "upstream_unavailable")
    assert address in error["message"]


async def test_unreachable_call_is_still_recorded(down: tuple[Local, str]) -> None:
    local, _ = down
    project = unique()
    async with local.client() as client:
        await client.post(SYNC, json=ask(project=project))

        record = await aonly_record(client, project)

    assert (record["status"], record["error_code"]) == ("error", "upstream_unavailable")


async def _stall_after_two_tokens(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """An Ollama that answers 200, sends two lines of its answer, then nothing at all."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n")
    writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
    for token in ("w0 ", "w1 "):
        line = msgspec.json.encode({"message": {"role": "assistant", "content": token}}) + b"\n"
        writer.write(b"%x\r\n%s\r\n" % (len(line), line))
    await writer.drain()
    await reader.read()  # until the gateway gives up and closes
    writer.close()


@pytest.fixture
async def stalling(tmp_path: Path) -> AsyncIterator[Local]:
    """A gateway in this process with --timeout 0.3, whose Ollama (a socket server in this
    process, reached by the real transport) stops sending mid-answer."""
    server = await asyncio.start_server(_stall_after_two_tokens, "127.0.0.1", 0)
    address = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    flags = ("--ollama", address, "--timeout", "0.3")
    upstream = upstreams.build(parse_settings(list(flags), {}))
    async with server, in_process(tmp_path / "data", *flags, upstream=upstream) as local:
        yield local


async def test_a_silent_ollama_is_504_at_the_timeout_and_recorded(stalling: Local) -> None:
    project = unique()
    async with stalling.client() as client:
        response = await client.post(SYNC, json=ask(project=project))

        record = await aonly_record(client, project)
    assert_error(response, 504, "upstream_timeout")
    assert (record["status"], record["error_code"]) == ("error", "upstream_timeout")


async def test_a_stream_whose_ollama_falls_silent_ends_with_a_timeout_event(
    stalling: Local,
) -> None:
    project = unique()
    async with stalling.client() as client:
        response = await client.post(STREAM, json=ask(project=project))

        record = await aonly_record(client, project)
    events = parse_sse(response.text)
    # The stand-in starts with nothing loaded: the upstream loads the model first.
    assert [e.event for e in events] == ["start", "loading", "token", "token", "error"]
    assert data(events[-1])["error"]["code"] == "upstream_timeout"
    assert (record["status"], record["error_code"], record["output"]) == (
        "error",
        "upstream_timeout",
        "w0 w1 ",
    )


# -- the seed's pieces on their own ----------------------------------------------------


def test_the_template_is_the_system_prompt_and_labels_come_along() -> None:
    request, labels = call_of(
        AskRequest(
            agent="llama3",
            content="hi",
            template="Be brief.",
            project="p",
            process_id="1",
            subprocess_id="2",
        )
    )
    bare, _ = call_of(AskRequest(agent="llama3", content="hi"))

    assert request.model == "llama3"
    assert request.messages == [Message("system", "Be brief."), Message("user", "hi")]
    assert (labels.project, labels.process_id, labels.subprocess_id) == ("p", "1", "2")
    assert bare.messages == [Message("user", "hi")]


@pytest.mark.parametrize(
    ("accept", "json_reply"),
    [
        (None, False),
        ("", False),
        ("application/json", True),
        ("application/*", True),
        ("APPLICATION/JSON", True),
        ("text/plain, application/json", False),
        ("application/json, text/plain", True),
        ("application/json;q=0", False),
        ("application/json;q=0.5, text/plain;q=0.4", True),
        ("application/json;q=oops", True),
        ("text/*", False),
    ],
)
def test_wants_json_follows_the_accept_header(accept: str | None, json_reply: bool) -> None:
    assert wants_json(accept) is json_reply


def _record(**fields: object) -> UsageRecord:
    base: dict[str, object] = {
        "id": "call-1",
        "date": "2025-01-01T00:00:00.000000+00:00",
        "total_seconds": 0.5,
        "total_tokens": 5,
        "input_tokens": 3,
        "output_tokens": 2,
        "model_name": "llama3",
        "input": [],
        "output": "w0 w1 ",
        "status": "ok",
    }
    return msgspec.convert({**base, **fields}, UsageRecord)


def test_seed_events_number_every_event_from_0() -> None:
    frame = SeedEvents()

    wire = b"".join(
        [
            frame(Started("call-1", "llama3")),
            frame(Pieces([Piece("w0 "), Piece(""), Piece("", thinking="hm")])),
            frame(Pieces([Piece("w1 ")])),
            frame(Done(Metrics(), _record())),
        ]
    )

    events = parse_sse(wire.decode())
    assert [(e.id, e.event) for e in events] == [
        ("0", "start"),
        ("1", "token"),
        ("2", "token"),
        ("3", "token"),
        ("4", "done"),
    ]
    assert data(events[0]) == {"id": "call-1", "model": "llama3"}
    assert [data(e) for e in events[1:4]] == [
        {"content": "w0 "},
        {"content": "", "thinking": "hm"},
        {"content": "w1 "},
    ]
    assert data(events[4])["id"] == "call-1"
    assert data(events[4])["output_tokens"] == 2


def test_a_failure_is_the_last_event_in_the_one_error_shape() -> None:
    frame = SeedEvents()
    frame(Started("call-1", "llama3"))
    error = CallError(502, "upstream_error", "runner crashed", request_id="call-1")

    (event,) = parse_sse(frame(Failed(error, None)).decode())

    assert (event.id, event.event) == ("1", "error")
    assert data(event) == {
        "error": {
            "status": 502,
            "code": "upstream_error",
            "message": "runner crashed",
            "request_id": "call-1",
        }
    }


def test_newlines_in_a_token_stay_inside_one_data_line() -> None:
    frame = SeedEvents()

    wire = frame(Pieces([Piece("a\nb\r\n\nc")]))

    assert wire.count(b"\n\n") == 1
    assert wire.endswith(b"\n\n")
    (event,) = parse_sse(wire.decode())
    assert data(event)["content"] == "a\nb\r\n\nc"
