"""The shutdown timer: calls still waiting on an upstream `grace` seconds after the gateway is
told to stop end as `server_shutdown`, each with its last word and its record."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class ShuttingDown(Exception):
    """The gateway is stopping and this call's grace period is over."""


class Drain:
    """One timer for the whole gateway, not one per await: a streamed token used to pay for
    an asyncio.timeout() of its own (5-7% of the gateway's CPU)."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.cut = False
        self._cut_at: asyncio.TimerHandle | None = None
        # The tasks awaiting an upstream right now, and those the cut cancelled.
        self._waiting: set[asyncio.Task[object]] = set()
        self._cut_tasks: set[asyncio.Task[object]] = set()

    def start(self, grace: float) -> None:
        """The server is stopping: calls in flight get `grace` more seconds, then end."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + grace
        if self._cut_at is not None:
            self._cut_at.cancel()
        self._cut_at = loop.call_at(self.deadline, self._cut)

    def _cut(self) -> None:
        self.cut = True
        for task in self._waiting:
            self._cut_tasks.add(task)
            task.cancel()

    def waiting(self, task: asyncio.Task[object]) -> None:
        """`task` is about to await an upstream; call `done_waiting` after, in a `finally`.

        Raises ShuttingDown if the grace period is already over. The await itself raises
        CancelledError if the period ends meanwhile: pass it to `cut_short`.
        """
        if self.cut:
            raise ShuttingDown
        self._waiting.add(task)

    def done_waiting(self, task: asyncio.Task[object]) -> None:
        self._waiting.discard(task)

    def cut_short(self, task: asyncio.Task[object]) -> bool:
        """Whether a CancelledError `task` got while waiting was the shutdown's alone; if so
        it is taken back, and the caller raises ShuttingDown instead."""
        if task not in self._cut_tasks:
            return False
        self._cut_tasks.discard(task)
        return task.uncancel() == 0

    async def guard(self, work: Awaitable[T]) -> T:
        """Await `work`, unless the grace period runs out first (ShuttingDown)."""
        task = asyncio.current_task()
        assert task is not None
        try:
            self.waiting(task)
        except ShuttingDown:
            if asyncio.iscoroutine(work):
                work.close()
            raise
        try:
            return await work
        except asyncio.CancelledError:
            if self.cut_short(task):
                raise ShuttingDown from None
            raise
        finally:
            self.done_waiting(task)
