"""A call's place in the fair queue: who it is accounted to, its class and weight, and the
clock of its wait.

The pipeline makes one `Place` per call and hands it to the upstream through `current` (a
context variable), so the upstream seam keeps its signature: a router reads it when it must
queue the call, and any other upstream ignores it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import Literal, Protocol

Priority = Literal["interactive", "batch"]
# Served in this order: every waiting interactive call before any batch one.
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
RANK: dict[str, int] = {name: rank for rank, name in enumerate(PRIORITIES)}


class Standing(Protocol):
    """Where a place waits (queueing.line.Line, or a line shared through Redis): it knows
    where the place stands."""

    def standing(self, place: Place) -> tuple[int, int] | None: ...


class PriorityError(ValueError):
    """An X-Priority header that names no class."""


def priority_of(header: str | None) -> Priority | None:
    """The class an `X-Priority` header asks for (None without one); PriorityError for a
    value that is not a class."""
    if header is None:
        return None
    value = header.strip().lower()
    for name in PRIORITIES:
        if value == name:
            return name
    raise PriorityError(
        f"X-Priority must be {' or '.join(PRIORITIES)}, not {header[:40]!r}; a caller may only "
        "lower its key's class"
    )


def served(own: Priority, asked: Priority | None) -> Priority:
    """The class a call is served at: the one asked for if it is not above the key's own."""
    if asked is None or RANK[asked] < RANK[own]:
        return own
    return asked


class Place:
    """One call as the queue sees it. `tenant` is what fair shares are counted by: the API
    key's id, else the project, else everyone together (see docs/queue.md)."""

    __slots__ = (
        "asked",
        "capped",
        "charged",
        "enqueued",
        "granted",
        "held_from",
        "key_label",
        "lease",
        "line",
        "loading",
        "model",
        "on_grant",
        "priority",
        "project",
        "seq",
        "tenant",
        "upstream",
        "weight",
    )

    # Its fields may be given by position: the pipeline makes one per call, and a class
    # called with keywords gets them as a dict (3,700 instructions more for these eight).
    def __init__(
        self,
        tenant: str,
        key_label: str | None = None,
        project: str | None = None,
        priority: Priority = "interactive",
        asked: Priority | None = None,
        weight: float = 1.0,
        model: str = "",
        on_grant: Callable[[float], None] | None = None,
    ) -> None:
        self.tenant = tenant
        self.key_label = key_label
        self.project = project
        self.priority: Priority = priority
        # What the caller's X-Priority asked for (None: nothing).
        self.asked = asked
        self.weight = weight
        self.model = model
        self.on_grant = on_grant
        # When it began to wait for a slot, and got one (time.monotonic()); None until then.
        self.enqueued: float | None = None
        self.granted: float | None = None
        # Its arrival number in its line, kept when it looks again (FIFO within a tenant).
        self.seq: int | None = None
        # The line it waits in now; None once it has a slot (or never waited).
        self.line: Standing | None = None
        # Slot-seconds charged to its tenant when it was granted (an estimate, corrected at
        # release by the time it really held the slot).
        self.charged = 0.0
        self.held_from: float | None = None
        # A slot shared through Redis: (its lease id, its upstream).
        self.lease: tuple[str, str] | None = None
        # The upstream it runs on, and whether that upstream did not have the model loaded.
        self.upstream: str | None = None
        self.loading = False
        # It went to an upstream with a cap: where a call can wait, so its wait is told.
        self.capped = False

    @property
    def queue_seconds(self) -> float | None:
        """Seconds it waited in the gateway for a slot (0 if one was free); None before."""
        if self.granted is None:
            return None
        return 0.0 if self.enqueued is None else max(0.0, self.granted - self.enqueued)

    def grant(self, upstream: str, *, loading: bool) -> None:
        self.granted = now = time.monotonic()
        self.line = None
        self.upstream = upstream
        self.loading = loading
        if self.on_grant is not None:
            enqueued = self.enqueued
            self.on_grant(0.0 if enqueued is None else max(0.0, now - enqueued))

    def standing(self) -> tuple[int, int] | None:
        """(position, calls ahead) while it waits; None once it has a slot."""
        line = self.line
        return None if line is None else line.standing(self)

    def waited(self, now: float | None = None) -> float:
        """Seconds waited so far (or in all, once granted)."""
        if self.enqueued is None:
            return 0.0
        end = self.granted if self.granted is not None else (now or time.monotonic())
        return max(0.0, end - self.enqueued)


current: contextvars.ContextVar[Place | None] = contextvars.ContextVar("place", default=None)
