"""Streams that survive a dropped connection: a resumable stream's call runs on in a task of
its own, its framed events kept, so that a client that reconnects with `Last-Event-ID` gets
every event it missed, in order, then the live rest; the upstream is asked once.

- `Resumes.open(call, framing, ...)` starts one: a producer task reads the call's events,
  frames each wire event on its own (`Frames.frames`: numbered from 0, without gaps) and
  keeps it. The client, and each client that resumes, is an `Attachment`: what
  `CallStreamResponse` streams (routes/streaming.py), so keep-alives, `--send-timeout` and
  the hang-up watch are the same as for any stream. One client at a time: a newer one takes
  the stream over.
- A client that leaves (or stalls) detaches; `--resume-window` seconds later, with nobody
  back, the call's upstream request is closed and the call recorded `cancelled` with what it
  generated. A finished stream is kept as long after its last client left, since a client
  cannot tell the gateway whether the last bytes sent reached it.
- What is kept is bounded by `--resume-buffer` bytes: past it, events a client was already
  sent are let go from the front; if none can be, the producer stops reading the upstream
  (so TCP pushes back on the model server) until a client takes more, or the window ends.
- Who may resume: whoever holds the stream's handle (`resume` in its `start` event) and is
  the same caller (the same key, the admin, or anyone while no key exists); or whoever
  brings the stream ticket it was opened with, which is how a browser's EventSource
  reconnects (the same URL, the ticket in it). Handles and tickets are secrets; an unknown
  one, or another caller's, finds nothing.

The buffers live in this process: a reconnect that reaches another gateway process finds
nothing (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Protocol

from calls.errors import CallError, shutting_down
from calls.events import Event
from queueing import Place

from .streaming import SSEFraming

log = logging.getLogger("ollama_host.resume")

# What one kept event costs besides its bytes (a list slot, a bytes object's header).
EVENT_OVERHEAD = 64
# Streams whose window passed, remembered so that a late reconnect hears `stream_expired`
# rather than nothing: at most this many, for this long.
MAX_EXPIRED = 10_000
EXPIRED_SECONDS = 600.0


class Producing(Protocol):
    """What a resumable stream needs of its call (a streamed `calls.pipeline.Call`)."""

    id: str
    gone: bool
    reason: CallError | None
    place: Place | None

    def events(self) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


class Frames(Protocol):
    """A framing that gives each wire event of a call's event on its own, the wire events
    numbered from 0 without gaps (the seed's SSE `id:`)."""

    def frames(self, event: Event) -> list[bytes]: ...


class Framed(Event):
    """Some kept events' bytes, framed already: what an Attachment yields."""

    data: bytes


class Relay(SSEFraming):
    """The framing of an Attachment's stream: the kept bytes as they are."""

    __slots__ = ()

    def __call__(self, event: Event) -> bytes:
        assert isinstance(event, Framed)
        return event.data


def digest(secret: str) -> str:
    """How a ticket is kept: never as itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Expired:
    """A stream whose window passed: whose it was."""

    __slots__ = ("holder",)

    def __init__(self, holder: str) -> None:
        self.holder = holder


class Resumable:
    """One resumable stream: its call, its kept events, and its client, if one is there."""

    def __init__(
        self,
        owner: Resumes,
        call: Producing,
        framing: Frames,
        *,
        handle: str,
        holder: str,
        ticket: str | None,
    ) -> None:
        self.owner = owner
        self.call = call
        self.id = call.id
        self.framing = framing
        self.handle = handle
        self.holder = holder
        self.ticket = ticket
        # Kept events: frames[i] is event `base + i`.
        self.frames: list[bytes] = []
        self.base = 0
        self.size = 0
        # The highest event id written to a client, plus one: what may be let go.
        self.delivered = 0
        self.finished = False
        self.client: Attachment | None = None
        self.more = asyncio.Event()
        self.room = asyncio.Event()
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False
        self.producer = asyncio.ensure_future(self._produce())
        self.producer.add_done_callback(self._produced)

    @property
    def end(self) -> int:
        """The id the next event will have."""
        return self.base + len(self.frames)

    async def _produce(self) -> None:
        call = self.call
        frames = self.framing.frames
        limit = self.owner.buffer
        try:
            async for event in call.events():
                for frame in frames(event):
                    cost = len(frame) + EVENT_OVERHEAD
                    while self.size + cost > limit and self.size:
                        if not self._let_go(cost):
                            self.room.clear()
                            await self.room.wait()
                    self.frames.append(frame)
                    self.size += cost
                self.more.set()
                if call.gone:
                    break
        except asyncio.CancelledError:
            # Only the window's end (or the gateway's) cancels the producer; the call's
            # close below records it.
            if not self.expired:
                raise
        finally:
            self.finished = True
            self.more.set()
            await call.aclose()

    def _produced(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("resumable stream %s failed", self.id, exc_info=exc)

    def _let_go(self, cost: int) -> bool:
        """Let go of events already written to a client, from the front, until `cost` more
        bytes fit; whether they do."""
        limit = self.owner.buffer
        frames, size, gone = self.frames, self.size, 0
        # In one cut, not one event at a time: a list loses its head in one move.
        sent = min(self.delivered - self.base, len(frames))
        while gone < sent and size + cost > limit:
            size -= len(frames[gone]) + EVENT_OVERHEAD
            gone += 1
        if gone:
            del frames[:gone]
            self.base += gone
            self.size = size
        return size + cost <= limit or not frames

    def attach(self, after: int) -> Attachment:
        """A client that has every event up to `after` (-1: none) and takes the rest."""
        old = self.client
        if old is not None:
            # A reconnect that came before the gateway noticed the old connection go: the
            # old one ends (cleanly, should its client still be there).
            old.taken_over = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        client = self.client = Attachment(self, after + 1)
        self.more.set()
        return client

    def detach(self, client: Attachment) -> None:
        """`client` left: nobody back within the window, the stream ends."""
        if self.client is not client:
            return
        self.client = None
        if self.timer is None and not self.expired:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.owner.window, self.expire)

    def expire(self, reason: CallError | None = None) -> None:
        """Nobody came back: close the upstream request (if the call still runs), record the
        call `cancelled` with what it generated, and forget the events."""
        if self.expired:
            return
        self.expired = True
        self.timer = None
        call = self.call
        if not self.finished:
            log.info("stream %s: nobody resumed it; ended", self.id)
            call.reason = reason or CallError(
                499,
                "client_gone",
                f"the client left and did not resume within --resume-window "
                f"({self.owner.window:g} s)",
                request_id=self.id,
            )
            call.gone = True
            self.producer.cancel()
        self.frames = []
        self.size = 0
        self.owner._forget(self)
        if self.client is not None:
            self.client.gone = True
        self.more.set()


class Attachment:
    """One client's view of a resumable stream, streamed by CallStreamResponse as it streams
    a call: `events()` yields the kept events from `cursor` on, then the live ones."""

    __slots__ = ("cursor", "gone", "id", "place", "stream", "taken_over")

    def __init__(self, stream: Resumable, cursor: int) -> None:
        self.stream = stream
        self.id = stream.id
        # The call's place in the fair queue: its first client learns where it stands.
        self.place = stream.call.place if cursor == 0 else None
        self.cursor = cursor
        self.gone = False
        self.taken_over = False

    async def events(self) -> AsyncIterator[Event]:
        stream = self.stream
        while not self.gone and not self.taken_over:
            start = self.cursor - stream.base
            if start < len(stream.frames):
                kept = stream.frames
                data = kept[start] if start + 1 == len(kept) else b"".join(kept[start:])
                self.cursor = stream.end
                yield Framed(data)
                # Written: what was sent may be let go to make room.
                if self.cursor > stream.delivered:
                    stream.delivered = self.cursor
                    stream.room.set()
                continue
            if stream.finished or stream.expired:
                return
            stream.more.clear()
            await stream.more.wait()

    def stalled(self, seconds: float) -> None:
        """The client took nothing for `seconds`: it is taken for gone (the window starts)."""
        log.info("resumable stream %s: client stalled for %g s", self.id, seconds)

    async def aclose(self) -> None:
        self.stream.detach(self)


class Resumes:
    """This process's resumable streams, by handle and by ticket."""

    def __init__(self, *, window: float, buffer: int) -> None:
        self.window = window
        self.buffer = buffer
        self.live: dict[str, Resumable] = {}
        self.tickets: dict[str, Resumable] = {}
        # Handles and ticket digests of streams whose window passed: (until, holder).
        self.expired: OrderedDict[str, tuple[float, Expired]] = OrderedDict()

    def open(
        self,
        call: Producing,
        framing: Frames,
        *,
        handle: str,
        holder: str,
        ticket: str | None = None,
    ) -> Attachment:
        """Start keeping `call`'s events; its first client."""
        stream = Resumable(self, call, framing, handle=handle, holder=holder, ticket=ticket)
        self.live[handle] = stream
        if ticket is not None:
            self.tickets[digest(ticket)] = stream
        return stream.attach(-1)

    @staticmethod
    def new_handle() -> str:
        return secrets.token_urlsafe(18)

    def by_handle(self, handle: str, holder: str) -> Resumable | Expired | None:
        """The stream this handle names, if it is `holder`'s."""
        found = self.live.get(handle)
        if found is not None:
            return found if found.holder == holder else None
        gone = self._expired(handle)
        return gone if gone is not None and gone.holder == holder else None

    def by_ticket(self, ticket: str) -> Resumable | Expired | None:
        """The stream this ticket opened: bringing the ticket is proof enough."""
        key = digest(ticket)
        return self.tickets.get(key) or self._expired(key)

    def _expired(self, key: str) -> Expired | None:
        entry = self.expired.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self.expired[key]
            return None
        return entry[1]

    def _forget(self, stream: Resumable) -> None:
        self.live.pop(stream.handle, None)
        keys = [stream.handle]
        if stream.ticket is not None:
            key = digest(stream.ticket)
            self.tickets.pop(key, None)
            keys.append(key)
        now = time.monotonic()
        while self.expired and (
            len(self.expired) >= MAX_EXPIRED or next(iter(self.expired.values()))[0] < now
        ):
            self.expired.popitem(last=False)
        tomb = Expired(stream.holder)
        for key in keys:
            self.expired[key] = (now + EXPIRED_SECONDS, tomb)

    async def aclose(self) -> None:
        """The gateway stops: every stream still kept ends now, recorded as cut short by the
        shutdown (a client can no longer come back to this process)."""
        streams = list(self.live.values())
        for stream in streams:
            stream.expire(shutting_down(stream.id))
        for stream in streams:
            with contextlib.suppress(asyncio.CancelledError):
                await stream.producer
