"""What a streamed call yields, in order: `Started`, then `Pieces` as the upstream reads them,
then `Done` or `Failed`. A front frames each in its own wire format.

More kinds may come (a queue's position, a model being loaded): every event is an `Event`,
and a front's framing answers `b""` for one it does not know, so a new kind never breaks a
front.
"""

from __future__ import annotations

import msgspec

from store.records import UsageRecord

from .errors import CallError
from .types import Metrics, Piece


class Event(msgspec.Struct):
    """What a call yields; the kinds below, and any added later."""


class Started(Event):
    """First: the call exists (its id is its record's), before any answer."""

    id: str
    model: str


class Queued(Event):
    """While the call waits for a slot: its place in the fair queue (1: next), and how many
    calls would be served before it. Sent again whenever either changes."""

    position: int
    ahead: int


class Loading(Event):
    """The upstream chosen for the call does not have the model loaded: it loads it first."""

    upstream: str
    model: str


class Pieces(Event):
    """What one upstream read brought: one piece, or several if they came together."""

    pieces: list[Piece]


class Done(Event):
    """Last, when the answer is complete: the upstream's metrics and the call's record."""

    metrics: Metrics
    record: UsageRecord


class Failed(Event):
    """Last, when the call failed or was cut off after it started."""

    error: CallError
    record: UsageRecord | None
