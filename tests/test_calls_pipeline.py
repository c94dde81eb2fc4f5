"""calls/pipeline.py: the Gateway against a scripted upstream and a TinyDB store in tmp.

The promise under test: every call gets exactly one usage record, whichever way it ends (an
answer, an upstream failure, a client that leaves, a shutdown, a bug), and every place it held
under the limits is given back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from access.identity import Credentials
from access.keys import Access, KeyLimits
from access.limits import Limits
from calls.errors import CallError, ModelNotFound, UpstreamFailed, UpstreamTimeout
from calls.events import Done, Event, Failed, Pieces, Started
from calls.pipeline import Ask, Call, Finished, Gateway
from calls.types import Answer, CallRequest, EmbedRequest, Labels, Message, Piece
from ollama_host.settings import parse_settings
from routes.request_id import new_id
from store import TinyDBStore, UsageQuery, UsageRecord
from tests.fakes import HOLD, FakeUpstream

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "pipeline-admin-token"
LABELS = Labels(project="p", process_id="001", subprocess_id="002")
NOBODY = Credentials()


@asynccontextmanager
async def pipeline(
    folder: Path, *flags: str, **script: Any
) -> AsyncIterator[tuple[Gateway, FakeUpstream]]:
    """A Gateway as the app builds it, with `flags` as settings, asking a FakeUpstream."""
    settings = parse_settings(["--data", str(folder), *flags], {})
    access, _ = Access.open(settings.data_path, ADMIN_TOKEN)
    store = TinyDBStore(settings.data_path)
    upstream = FakeUpstream(**script)
    gateway = Gateway(
        upstream,
        store,
        access,
        Limits(settings),
        max_prompt=settings.max_prompt,
        max_output=settings.max_record_output,
        open_wait=settings.open_wait,
    )
    try:
        yield gateway, upstream
    finally:
        await store.aclose()


def chat(content: str = "hello", model: str = "llama3") -> CallRequest:
    return CallRequest(
        model=model, messages=[Message("system", "Be brief."), Message("user", content)]
    )


def ask(
    request: CallRequest | None = None, *, credentials: Credentials = NOBODY
) -> Ask[CallRequest]:
    """A front's ask, as a test front named "test" makes it."""
    return Ask(
        request=request or chat(),
        credentials=credentials,
        labels=LABELS,
        id=new_id(),
        front="test",
        endpoint="/test",
    )


def streamed(asked: Ask[CallRequest]) -> Ask[CallRequest]:
    return msgspec.structs.replace(asked, stream=True)


def embedding(asked: Ask[CallRequest], request: EmbedRequest) -> Ask[EmbedRequest]:
    """The same ask, for embeddings."""
    return Ask(
        request=request,
        credentials=asked.credentials,
        labels=asked.labels,
        id=asked.id,
        front=asked.front,
        endpoint=asked.endpoint,
    )


async def answer(gateway: Gateway, asked: Ask[CallRequest]) -> Finished[Answer]:
    """The one call, for a whole answer."""
    return await (await gateway.call(asked)).answer()


async def records_of(gateway: Gateway, call_id: str) -> list[UsageRecord]:
    """Every stored record of the call `call_id`, once all appended so far is stored."""
    await gateway.store.flush()
    return [r for r in await gateway.store.query(UsageQuery(limit=1000)) if r.id == call_id]


async def the_record(gateway: Gateway, call_id: str) -> UsageRecord:
    found = await records_of(gateway, call_id)
    assert len(found) == 1, found
    return found[0]


async def play(stream: Call[CallRequest]) -> list[Event]:
    """Every event of a stream, which is closed afterwards as the fronts close it."""
    try:
        return [event async for event in stream.events()]
    finally:
        await stream.aclose()


# -- whole answers -------------------------------------------------------------------


async def test_an_answer_is_recorded_once_with_its_metrics(tmp_path: Path) -> None:
    async with pipeline(tmp_path) as (gateway, upstream):
        call = ask()

        finished = await answer(gateway, call)

        record = await the_record(gateway, call.id)
    assert finished.result.content == "w0 w1 "
    assert finished.record == record
    assert (record.status, record.output, record.streamed) == ("ok", "w0 w1 ", False)
    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (3, 2, 5)
    assert (record.project, record.process_id, record.subprocess_id) == ("p", "001", "002")
    assert (record.front, record.endpoint, record.upstream, record.attempts) == (
        "test",
        "/test",
        "fake",
        2,
    )
    assert [(m.role, m.content) for m in record.input] == [
        ("system", "Be brief."),
        ("user", "hello"),
    ]
    assert record.ttft_seconds is None
    assert upstream.asked == [chat()]


async def test_an_upstream_failure_is_a_call_error_and_one_record(tmp_path: Path) -> None:
    async with pipeline(tmp_path, fail=ModelNotFound('model "x" not found')) as (gateway, _):
        call = ask()

        with pytest.raises(CallError) as raised:
            await answer(gateway, call)

        record = await the_record(gateway, call.id)
    assert (raised.value.status, raised.value.code) == (404, "model_not_found")
    assert raised.value.request_id == call.id
    assert (record.status, record.error_code, record.error) == (
        "error",
        "model_not_found",
        'model "x" not found',
    )


async def test_a_cancelled_answer_is_recorded_as_cancelled(tmp_path: Path) -> None:
    async with pipeline(tmp_path, hold=True) as (gateway, upstream):
        call = ask()
        asking = asyncio.ensure_future(answer(gateway, call))
        await upstream.holding.wait()

        asking.cancel()

        with pytest.raises(asyncio.CancelledError):
            await asking
        record = await the_record(gateway, call.id)
    assert (record.status, record.error_code, record.output) == ("cancelled", None, "")


async def test_an_answer_cut_by_shutdown_is_503_and_recorded_once(tmp_path: Path) -> None:
    async with pipeline(tmp_path, hold=True) as (gateway, upstream):
        call = ask()
        asking = asyncio.ensure_future(answer(gateway, call))
        await upstream.holding.wait()

        gateway.drain.start(0)

        with pytest.raises(CallError) as raised:
            await asking
        record = await the_record(gateway, call.id)
    assert (raised.value.status, raised.value.code) == (503, "server_shutdown")
    assert raised.value.headers["Retry-After"] == "5"
    assert (record.status, record.error_code) == ("cancelled", "server_shutdown")


async def test_an_answer_asked_after_the_grace_period_never_reaches_upstream(
    tmp_path: Path,
) -> None:
    async with pipeline(tmp_path) as (gateway, upstream):
        gateway.drain.start(0)
        # Timers run in the order of their time: the grace period's ends before this sleep.
        await asyncio.sleep(0.001)
        assert gateway.drain.cut
        call = ask()

        with pytest.raises(CallError) as raised:
            await answer(gateway, call)

        record = await the_record(gateway, call.id)
    assert raised.value.code == "server_shutdown"
    assert record.status == "cancelled"
    assert upstream.asked == []


async def test_a_bug_below_the_pipeline_is_still_recorded(tmp_path: Path) -> None:
    async with pipeline(tmp_path) as (gateway, upstream):
        call = ask()

        async def broken(request: CallRequest) -> Any:
            raise ZeroDivisionError

        upstream.answer = broken  # type: ignore[method-assign]
        with pytest.raises(ZeroDivisionError):
            await answer(gateway, call)

        record = await the_record(gateway, call.id)
    assert (record.status, record.error_code) == ("error", "internal_error")


async def test_observers_see_each_record_once_and_tokens_are_charged(tmp_path: Path) -> None:
    async with pipeline(tmp_path, "--project-tokens-per-day", "5") as (gateway, _):
        seen: list[UsageRecord] = []
        gateway.observers.append(seen.append)

        await answer(gateway, ask())
        with pytest.raises(CallError) as raised:
            await gateway.call(ask())

    assert [r.status for r in seen] == ["ok"]
    assert (raised.value.status, raised.value.code) == (429, "rate_limited")


# -- streams -------------------------------------------------------------------------


async def test_a_stream_yields_start_pieces_done_and_one_record(tmp_path: Path) -> None:
    async with pipeline(tmp_path) as (gateway, upstream):
        call = ask()
        stream = await gateway.call(streamed(call))

        events = await play(stream)

        record = await the_record(gateway, call.id)
    assert events[0] == Started(call.id, "llama3")
    assert events[1:3] == [Pieces([Piece("w0 ")]), Pieces([Piece("w1 ")])]
    assert isinstance(events[3], Done)
    assert events[3].record == record
    assert len(events) == 4
    assert (record.status, record.output, record.streamed) == ("ok", "w0 w1 ", True)
    assert record.ttft_seconds is not None
    assert (record.upstream, record.attempts) == ("fake", 2)
    assert upstream.streams[0].closed


async def test_a_failure_mid_stream_is_a_failed_event_and_one_record(tmp_path: Path) -> None:
    steps = [[Piece("w0 ")], UpstreamFailed("runner crashed")]
    async with pipeline(tmp_path, steps=steps) as (gateway, upstream):
        call = ask()
        stream = await gateway.call(streamed(call))

        events = await play(stream)

        record = await the_record(gateway, call.id)
    last = events[-1]
    assert [type(e) for e in events] == [Started, Pieces, Failed]
    assert isinstance(last, Failed)
    assert (last.error.code, last.error.message, last.error.request_id) == (
        "upstream_error",
        "runner crashed",
        call.id,
    )
    assert last.record == record
    assert (record.status, record.error_code, record.output) == ("error", "upstream_error", "w0 ")
    # The upstream sent no count: the chunks stand for it, and the record says so.
    assert (record.output_tokens, record.tokens_estimated) == (1, True)
    assert upstream.streams[0].closed


async def test_a_stream_that_ends_without_its_account_is_a_bad_response(tmp_path: Path) -> None:
    async with pipeline(tmp_path, metrics=None) as (gateway, _):
        call = ask()
        stream = await gateway.call(streamed(call))

        events = await play(stream)

        record = await the_record(gateway, call.id)
    last = events[-1]
    assert isinstance(last, Failed)
    assert last.error.code == "upstream_bad_response"
    assert (record.status, record.error_code) == ("error", "upstream_bad_response")


async def test_a_stream_the_upstream_refuses_fails_before_it_starts(tmp_path: Path) -> None:
    async with pipeline(tmp_path, fail=ModelNotFound('model "x" not found')) as (gateway, _):
        call = ask()

        with pytest.raises(CallError) as raised:
            await gateway.call(streamed(call))

        record = await the_record(gateway, call.id)
    assert (raised.value.status, raised.value.code, raised.value.request_id) == (
        404,
        "model_not_found",
        call.id,
    )
    assert (record.status, record.error_code) == ("error", "model_not_found")


async def test_a_stream_whose_upstream_is_slow_to_open_is_not_failed_by_the_open_wait(
    tmp_path: Path,
) -> None:
    async with pipeline(tmp_path, "--open-wait", "0", hold=True) as (gateway, upstream):
        call = ask()
        stream = await gateway.call(streamed(call))

        upstream.release.set()
        events = await play(stream)

        record = await the_record(gateway, call.id)
    assert isinstance(events[-1], Done)
    assert record.status == "ok"


async def test_a_stream_left_by_its_client_is_cancelled_closed_and_recorded_once(
    tmp_path: Path,
) -> None:
    steps = [[Piece("w0 ")], HOLD, [Piece("w1 ")]]
    async with pipeline(tmp_path, steps=steps) as (gateway, upstream):
        call = ask()
        stream = await gateway.call(streamed(call))
        events = stream.events()
        seen = [await anext(events), await anext(events)]
        reading = asyncio.ensure_future(anext(events))
        await upstream.holding.wait()

        # What a front does when its client hangs up: cancel the relay, then close.
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await stream.aclose()
        await stream.aclose()

        record = await the_record(gateway, call.id)
    assert [type(e) for e in seen] == [Started, Pieces]
    assert (record.status, record.error_code, record.output) == ("cancelled", None, "w0 ")
    assert upstream.streams[0].closed


async def test_a_stream_marked_gone_stops_at_its_next_step(tmp_path: Path) -> None:
    steps = [[Piece("w0 ")], [Piece("w1 ")], [Piece("w2 ")]]
    async with pipeline(tmp_path, steps=steps) as (gateway, _):
        call = ask()
        stream = await gateway.call(streamed(call))
        events: list[Event] = []
        async for event in stream.events():
            events.append(event)
            if isinstance(event, Pieces):
                stream.gone = True
        await stream.aclose()

        record = await the_record(gateway, call.id)
    assert [type(e) for e in events] == [Started, Pieces]
    assert (record.status, record.output) == ("cancelled", "w0 ")


async def test_a_stream_closed_before_the_upstream_opened_is_recorded_once(
    tmp_path: Path,
) -> None:
    # --open-wait 0: the call is handed back at once, not after the default second of
    # waiting for an upstream that holds (it returns unopened either way).
    async with pipeline(tmp_path, "--open-wait", "0", hold=True) as (gateway, upstream):
        call = ask()
        stream = await gateway.call(streamed(call))
        await upstream.holding.wait()

        await stream.aclose()

        record = await the_record(gateway, call.id)
    assert record.status == "cancelled"
    assert upstream.streams == []


async def test_a_stream_cut_by_shutdown_ends_with_server_shutdown(tmp_path: Path) -> None:
    steps = [[Piece("w0 ")], HOLD, [Piece("w1 ")]]
    async with pipeline(tmp_path, steps=steps) as (gateway, upstream):
        call = ask()
        stream = await gateway.call(streamed(call))
        playing = asyncio.ensure_future(play(stream))
        await upstream.holding.wait()

        gateway.drain.start(0)

        events = await playing
        record = await the_record(gateway, call.id)
    last = events[-1]
    assert [type(e) for e in events] == [Started, Pieces, Failed]
    assert isinstance(last, Failed)
    assert (last.error.status, last.error.code) == (503, "server_shutdown")
    assert last.record == record
    assert (record.status, record.error_code, record.output) == (
        "cancelled",
        "server_shutdown",
        "w0 ",
    )
    assert upstream.streams[0].closed


async def test_a_stalled_client_is_recorded_with_the_reason(tmp_path: Path) -> None:
    async with pipeline(tmp_path, steps=[[Piece("w0 ")], HOLD]) as (gateway, _):
        call = ask()
        stream = await gateway.call(streamed(call))
        events = stream.events()
        await anext(events)
        await anext(events)

        stream.stalled(1.5)
        await stream.aclose()

        record = await the_record(gateway, call.id)
    assert (record.status, record.error_code) == ("cancelled", "client_stalled")
    assert record.error is not None
    assert "1.5 s" in record.error


async def test_a_streams_places_are_given_back_however_it_ends(tmp_path: Path) -> None:
    flags = ("--max-streams", "1")
    async with pipeline(tmp_path, *flags, fail=UpstreamTimeout("slow")) as (gateway, upstream):
        for _ in range(3):
            with pytest.raises(CallError):
                await gateway.call(streamed(ask()))
        upstream.fail = None
        held = await gateway.call(streamed(ask()))

        with pytest.raises(CallError) as refused:
            await gateway.call(streamed(ask()))

        await play(held)
        again = await gateway.call(streamed(ask()))
        await play(again)
    assert (refused.value.status, refused.value.code) == (429, "rate_limited")


# -- embeddings ------------------------------------------------------------------------


async def test_embeddings_are_recorded_once_without_their_vectors(tmp_path: Path) -> None:
    async with pipeline(tmp_path) as (gateway, _):
        call = ask()
        request = EmbedRequest(model="llama3", input=["one", "two"])

        finished = await (await gateway.call(embedding(call, request))).embeddings()
        embeddings, record = finished.result, finished.record

        stored = await the_record(gateway, call.id)
    assert embeddings.vectors == [[0.5, 0.25], [0.5, 0.25]]
    assert stored == record
    assert (record.status, record.input_count, record.input_tokens, record.output) == (
        "ok",
        2,
        4,
        "",
    )
    assert [m.content for m in record.input] == ["one", "two"]


async def test_a_failed_embedding_is_recorded_once(tmp_path: Path) -> None:
    async with pipeline(tmp_path, fail=UpstreamFailed("no")) as (gateway, _):
        call = ask()

        failing = await gateway.call(embedding(call, EmbedRequest(model="llama3", input=["x"])))

        with pytest.raises(CallError):
            await failing.embeddings()

        record = await the_record(gateway, call.id)
    assert (record.status, record.error_code) == ("error", "upstream_error")


# -- admission -------------------------------------------------------------------------


async def test_admission_checks_who_what_and_how_much_before_any_upstream(tmp_path: Path) -> None:
    async with pipeline(tmp_path, "--max-prompt", "5") as (gateway, upstream):
        key, plain = await gateway.access.keys.create("team", ["qwen"], KeyLimits())

        key_holder = Credentials(bearer=plain)
        five, six = [Message("user", "12345")], [Message("user", "123456")]

        with pytest.raises(CallError) as nobody:
            await gateway.call(ask(CallRequest(model="qwen")))
        with pytest.raises(CallError) as wrong_model:
            await gateway.call(ask(CallRequest(model="llama3"), credentials=key_holder))
        with pytest.raises(CallError) as too_long:
            await gateway.call(ask(CallRequest(model="qwen", messages=six), credentials=key_holder))
        caller = (
            await gateway.call(
                ask(CallRequest(model="qwen:latest", messages=five), credentials=key_holder)
            )
        ).caller
        admin = (
            await gateway.call(
                ask(
                    CallRequest(model="llama3", messages=five),
                    credentials=Credentials(bearer=ADMIN_TOKEN),
                )
            )
        ).caller

    assert (nobody.value.status, nobody.value.code) == (401, "unauthorized")
    assert (wrong_model.value.status, wrong_model.value.code) == (403, "model_not_allowed")
    assert (too_long.value.status, too_long.value.code) == (413, "prompt_too_large")
    assert caller.key == key
    assert admin.admin
    assert upstream.asked == []


async def test_a_call_by_a_key_is_recorded_under_its_label(tmp_path: Path) -> None:
    async with pipeline(tmp_path) as (gateway, _):
        key, plain = await gateway.access.keys.create("team", None, KeyLimits())
        call = ask(credentials=Credentials(bearer=plain))

        await answer(gateway, call)

        record = await the_record(gateway, call.id)
    assert (record.key_id, record.key_label, record.user) == (key.id, "team", key.fingerprint)
    assert plain not in str(record)
