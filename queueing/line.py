"""The line of calls waiting for a slot, and the order they leave it in.

Fair order (the default): every waiting `interactive` call goes before any `batch` one; within
a class, tenants (API keys, see docs/queue.md) take turns by deficit round-robin, each in
proportion to its weight, and a tenant's own calls keep their arrival order. It is DRR in its
virtual-time form (start-time fair queueing), so a freed slot is handed over in O(waiting)
without rounds: each tenant has a virtual finish, advanced at every slot it is granted by the
slot-seconds a call costs (the line's running average) over its weight, and corrected at
release by the time the call really held the slot. The next call is the waiting one whose
tenant's finish is least; a tenant that was idle starts at the line's clock, so idleness is
not banked. Over time every busy tenant gets slot-seconds in proportion to its weight: what
GPU time a shared server gives is divided by key, not by who sends the most calls.

FIFO order (`--queue-order fifo`): arrival order only, as the gateway did before; the same
code, for comparison.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Callable, Hashable
from typing import Literal

from .place import RANK, Place

# Slot-seconds a call is taken to cost before any was measured.
FIRST_COST = 1.0
# How quickly the averages follow what is measured (weight of the newest sample).
ALPHA = 0.1
# Virtual finishes kept for tenants; past it, those no ahead of their class's clock go.
MAX_TENANTS = 4096
Order = Literal["fair", "fifo"]


class Waiter:
    """A call waiting in the line: the upstreams it could use, and the future its slot (an
    upstream, or None: look again) arrives by."""

    __slots__ = ("future", "members", "place")

    def __init__(
        self,
        members: frozenset[Hashable],
        future: asyncio.Future[object | None],
        place: Place,
    ) -> None:
        self.members = members
        self.future = future
        self.place = place


class Line:
    """Every call waiting for a slot on one router's upstreams."""

    def __init__(
        self,
        *,
        order: Order = "fair",
        max_waiting: int = 512,
        per_key: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.order: Order = order
        # What slot-seconds are measured by (a test gives its own).
        self.clock = clock
        self.max_waiting = max_waiting
        self.per_key = per_key
        self.waiting: list[Waiter] = []  # in arrival order
        self._count: dict[str, int] = {}  # tenant -> calls it has waiting
        self._finish: dict[tuple[int, str], float] = {}
        self._clock = [0.0] * len(RANK)
        self._seq = 0
        # Slot-seconds per call, on average; seconds between hand-overs while calls wait.
        self.cost = FIRST_COST
        self.interval: float | None = None
        self._handed_at: float | None = None
        # Positions, recomputed once per change of the line when someone asks.
        self._version = 0
        self._ranked = -1
        self._positions: dict[int, int] = {}

    # -- joining and leaving ---------------------------------------------------------------

    def full(self, place: Place) -> Literal["line", "key"] | None:
        """Why `place` may not join: the line holds --upstream-queue calls, or its tenant
        --queue-per-key; None if it may."""
        if len(self.waiting) >= self.max_waiting:
            return "line"
        if self.per_key and self._count.get(place.tenant, 0) >= self.per_key:
            return "key"
        return None

    def join(self, waiter: Waiter) -> None:
        place = waiter.place
        if place.seq is None:
            self._seq += 1
            place.seq = self._seq
        if place.enqueued is None:
            place.enqueued = time.monotonic()
        if not self.waiting:
            self._handed_at = None  # the line was empty: that time was not draining
        # In arrival order: one that looks again (woken by a change) keeps its turn.
        bisect.insort(self.waiting, waiter, key=_arrival)
        self._count[place.tenant] = self._count.get(place.tenant, 0) + 1
        place.line = self
        self._version += 1

    def leave(self, waiter: Waiter) -> None:
        """Take `waiter` out of the line, if it is still in it."""
        try:
            self.waiting.remove(waiter)
        except ValueError:
            return
        tenant = waiter.place.tenant
        left = self._count[tenant] - 1
        if left:
            self._count[tenant] = left
        else:
            del self._count[tenant]
        if waiter.place.line is self:
            waiter.place.line = None
        self._version += 1

    def next_for(self, member: Hashable) -> Waiter | None:
        """The waiter that gets a slot freed on `member`, taken out of the line."""
        best: Waiter | None = None
        best_key: tuple[float, ...] | None = None
        for waiter in self.waiting:
            if member not in waiter.members or waiter.future.done():
                continue
            key = self._key(waiter.place)
            if best_key is None or key < best_key:
                best, best_key = waiter, key
                if self.order == "fifo":
                    break  # arrival order: the first that can use it
        if best is not None:
            self.leave(best)
            now = time.monotonic()
            if self._handed_at is not None:
                gap = now - self._handed_at
                self.interval = gap if self.interval is None else _mix(self.interval, gap)
            self._handed_at = now if self.waiting else None
        return best

    def _key(self, place: Place) -> tuple[float, ...]:
        assert place.seq is not None
        if self.order == "fifo":
            return (place.seq,)
        rank = RANK[place.priority]
        start = max(self._clock[rank], self._finish.get((rank, place.tenant), 0.0))
        return (rank, start, place.seq)

    # -- accounting ------------------------------------------------------------------------

    def charge(self, place: Place, *, handed: bool) -> None:
        """Charge a granted call's tenant for the slot it took (by the average cost)."""
        rank = RANK[place.priority]
        slot = (rank, place.tenant)
        start = max(self._clock[rank], self._finish.get(slot, 0.0))
        if handed and start > self._clock[rank]:
            self._clock[rank] = start
        self._finish[slot] = start + self.cost / place.weight
        place.charged = self.cost
        place.held_from = self.clock()
        if len(self._finish) > MAX_TENANTS:
            self._forget()

    def release(self, place: Place) -> None:
        """The call ended: correct its tenant's charge by the time it really held the slot."""
        if place.held_from is None:
            return
        held = max(0.0, self.clock() - place.held_from)
        place.held_from = None
        slot = (RANK[place.priority], place.tenant)
        if slot in self._finish:
            self._finish[slot] += (held - place.charged) / place.weight
        place.charged = 0.0
        if held > 0:
            self.cost = _mix(self.cost, held)

    def learn(self, place: Place) -> float:
        """A call held elsewhere (a shared slot) ended: the seconds it held it, learnt into
        the average cost of a call."""
        if place.held_from is None:
            return 0.0
        held = max(0.0, self.clock() - place.held_from)
        place.held_from = None
        if held > 0:
            self.cost = _mix(self.cost, held)
        return held

    def _forget(self) -> None:
        """Drop the finishes that are no ahead of their class's clock (as if never seen)."""
        clock = self._clock
        self._finish = {s: f for s, f in self._finish.items() if f > clock[s[0]]}
        while len(self._finish) > MAX_TENANTS:
            self._finish.pop(min(self._finish, key=self._finish.__getitem__))

    # -- what callers are told -------------------------------------------------------------

    def standing(self, place: Place) -> tuple[int, int] | None:
        """(position, calls waiting ahead) of a waiting `place`, by the order the line would
        hand out slots if nothing changed."""
        if self._ranked != self._version:
            self._positions = {id(w.place): i for i, w in enumerate(self.ranked())}
            self._ranked = self._version
        index = self._positions.get(id(place))
        return None if index is None else (index + 1, index)

    def ranked(self) -> list[Waiter]:
        """The waiters in the order they would get slots: each tenant's calls at its virtual
        finish, one call's cost over its weight apart."""
        if self.order == "fifo":
            return list(self.waiting)
        nth: dict[tuple[int, str], int] = {}
        keyed = []
        for waiter in self.waiting:
            place = waiter.place
            rank = RANK[place.priority]
            slot = (rank, place.tenant)
            i = nth.get(slot, 0)
            nth[slot] = i + 1
            start = max(self._clock[rank], self._finish.get(slot, 0.0))
            keyed.append(((rank, start + i * self.cost / place.weight, place.seq), waiter))
        keyed.sort(key=lambda kw: kw[0])
        return [w for _, w in keyed]

    def tenant_waiting(self, tenant: str) -> int:
        return self._count.get(tenant, 0)

    def retry_after(self, calls: int, slots: int) -> int:
        """Seconds until `calls` waiting calls have left the line, at the rate it drains
        (measured between hand-overs; until then, the average cost over the slots)."""
        rate = 1 / self.interval if self.interval else max(1, slots) / max(self.cost, 1e-3)
        return max(1, min(3600, math.ceil(calls / rate)))


def _arrival(waiter: Waiter) -> int:
    return waiter.place.seq or 0


def _mix(average: float, sample: float) -> float:
    return average + ALPHA * (sample - average)
