"""routes/resuming.py: a resumable stream's kept events, its clients, its bound and its window,
against a scripted call (the HTTP side: tests/test_resume_streams.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from calls.errors import CallError
from calls.events import Event, Pieces, Started
from calls.types import Piece
from queueing import Place
from routes.resuming import Attachment, Expired, Framed, Resumable, Resumes
from routes.seed.framing import SeedEvents
from tests.sse import SSEParser

pytestmark = pytest.mark.anyio


class ScriptedCall:
    """A streamed call whose pieces the test feeds: a text each, None to end."""

    def __init__(self) -> None:
        self.id = "call-1"
        self.gone = False
        self.reason: CallError | None = None
        self.place: Place | None = None
        self.feed: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False

    async def events(self) -> AsyncIterator[Event]:
        yield Started(self.id, "llama3")
        while not self.gone:
            text = await self.feed.get()
            if text is None:
                return
            yield Pieces([Piece(content=text)])

    async def aclose(self) -> None:
        self.closed = True

    def say(self, *texts: str | None) -> None:
        for text in texts:
            self.feed.put_nowait(text)


def opened(resumes: Resumes, call: ScriptedCall) -> tuple[Resumable, Attachment]:
    client = resumes.open(call, SeedEvents("handle"), handle="handle", holder="key-1")
    stream = resumes.live["handle"]
    return stream, client


async def take(client: Attachment, count: int) -> list[tuple[str, str]]:
    """(id, token content or event name) of the next `count` events the client is sent."""
    parser = SSEParser()
    seen: list[tuple[str, str]] = []
    events = client.events()
    assert isinstance(events, AsyncGenerator)
    while len(seen) < count:
        framed = await anext(events)
        assert isinstance(framed, Framed)
        for event in parser.feed(framed.data.decode()):
            seen.append((event.id or "", event.data if event.event == "token" else event.event))
    await events.aclose()
    return seen


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_resume_gets_every_event_after_the_last_it_had_once() -> None:
    resumes = Resumes(window=60, buffer=1 << 20)
    call = ScriptedCall()
    stream, first = opened(resumes, call)
    call.say("a", "b", "c")

    before = await take(first, 4)
    await first.aclose()  # the client left
    call.say("d", "e", None)
    await settle()
    again = stream.attach(2)  # it had events 0 to 2; event 3 was lost on the way
    after = await take(again, 3)

    assert [i for i, _ in before] == ["0", "1", "2", "3"]
    assert after == [("3", '{"content":"c"}'), ("4", '{"content":"d"}'), ("5", '{"content":"e"}')]
    assert stream.finished
    assert call.closed
    assert not call.gone
    await resumes.aclose()


async def test_the_start_event_names_the_handle() -> None:
    resumes = Resumes(window=60, buffer=1 << 20)
    call = ScriptedCall()
    _, client = opened(resumes, call)

    ((event_id, name),) = await take(client, 1)
    stream = resumes.live["handle"]

    assert (event_id, name) == ("0", "start")
    assert b'"resume":"handle"' in stream.frames[0]
    call.say(None)
    await resumes.aclose()


async def test_only_its_holder_finds_a_stream_by_its_handle() -> None:
    resumes = Resumes(window=60, buffer=1 << 20)
    call = ScriptedCall()
    stream, _ = opened(resumes, call)

    assert resumes.by_handle("handle", "key-1") is stream
    assert resumes.by_handle("handle", "key-2") is None
    assert resumes.by_handle("guessed", "key-1") is None
    call.say(None)
    await resumes.aclose()


async def test_its_ticket_finds_a_stream_and_nothing_else_does() -> None:
    resumes = Resumes(window=60, buffer=1 << 20)
    call = ScriptedCall()
    resumes.open(call, SeedEvents("h"), handle="h", holder="key-1", ticket="the-ticket")

    assert resumes.by_ticket("the-ticket") is resumes.live["h"]
    assert resumes.by_ticket("another") is None
    assert "the-ticket" not in repr(resumes.tickets)  # kept as a digest
    call.say(None)
    await resumes.aclose()


async def test_nobody_back_within_the_window_ends_the_call() -> None:
    resumes = Resumes(window=0.05, buffer=1 << 20)
    call = ScriptedCall()
    stream, client = opened(resumes, call)
    call.say("a")
    await take(client, 2)

    await client.aclose()
    await stream.producer  # it ends when the window does

    assert call.gone
    assert call.closed
    assert call.reason is not None
    assert call.reason.code == "client_gone"
    assert "--resume-window" in call.reason.message
    assert "handle" not in resumes.live
    assert isinstance(resumes.by_handle("handle", "key-1"), Expired)
    assert resumes.by_handle("handle", "key-2") is None


async def test_a_client_back_within_the_window_keeps_the_call() -> None:
    resumes = Resumes(window=0.2, buffer=1 << 20)
    call = ScriptedCall()
    stream, client = opened(resumes, call)
    await take(client, 1)
    await client.aclose()

    again = stream.attach(0)
    await asyncio.sleep(0.3)  # past the window: the client is there, so nothing ends
    call.say("a", None)
    rest = await take(again, 1)

    assert rest == [("1", '{"content":"a"}')]
    assert not call.gone
    assert call.reason is None
    await resumes.aclose()


async def test_a_full_buffer_stops_reading_the_upstream_while_nobody_is_there() -> None:
    resumes = Resumes(window=60, buffer=4096)
    call = ScriptedCall()
    stream, client = opened(resumes, call)
    await take(client, 1)
    await client.aclose()
    call.say(*(f"token {i:04d}" for i in range(200)), None)

    await settle()
    unread = call.feed.qsize()
    again = stream.attach(0)
    rest = await take(again, 200)

    assert unread > 100  # the rest waits upstream, not in the gateway
    assert stream.size <= 4096
    assert [i for i, _ in rest] == [str(n) for n in range(1, 201)]
    assert [t for _, t in rest] == [f'{{"content":"token {i:04d}"}}' for i in range(200)]
    await resumes.aclose()


async def test_events_sent_are_let_go_past_the_bound() -> None:
    resumes = Resumes(window=60, buffer=4096)
    call = ScriptedCall()
    stream, client = opened(resumes, call)
    call.say(*(f"token {i:04d}" for i in range(200)), None)

    seen = await take(client, 201)

    assert [i for i, _ in seen] == [str(n) for n in range(201)]
    assert stream.size <= 4096
    assert stream.base > 100  # the head went; a resume from before it is refused
    assert stream.end == 201
    await resumes.aclose()


async def test_a_newer_client_takes_the_stream_over() -> None:
    resumes = Resumes(window=60, buffer=1 << 20)
    call = ScriptedCall()
    stream, first = opened(resumes, call)
    await take(first, 1)

    second = stream.attach(0)
    await first.aclose()  # the old connection's end, noticed late, detaches nothing
    call.say("a", None)

    assert first.taken_over
    assert [e async for e in first.events()] == []
    assert await take(second, 1) == [("1", '{"content":"a"}')]
    assert stream.client is second
    await resumes.aclose()


async def test_the_gateway_stopping_ends_every_kept_stream() -> None:
    resumes = Resumes(window=60, buffer=1 << 20)
    call = ScriptedCall()
    _, client = opened(resumes, call)
    await take(client, 1)
    await client.aclose()

    await resumes.aclose()

    assert call.closed
    assert call.gone
    assert call.reason is not None
    assert call.reason.code == "server_shutdown"
