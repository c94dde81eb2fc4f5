"""What a router needs of slots and a queue shared with other gateways (queueing.shared
keeps them in Redis), without the Redis client: a workstation install has none."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .place import Place, Standing


class SharedDown(Exception):
    """The shared store cannot be asked now: use the local line."""


class Shared(Protocol):
    """Slots (leases) and the fair queue, shared by every gateway that uses the same store."""

    @property
    def usable(self) -> bool:
        """False while the store is away (its steps would raise SharedDown)."""
        ...

    def watch(self, caps: Callable[[], list[tuple[str, int]]]) -> None: ...

    def describe(self) -> str:
        """`redis at ...`, or `local: <why>` while the store is away."""
        ...

    def waiting_count(self) -> int: ...

    def new_id(self) -> str: ...

    async def take(
        self, call_id: str, place: Place, ups: Sequence[tuple[str, int]], *, cost: float, order: str
    ) -> str | None: ...

    def standing_of(self, call_id: str) -> Standing | None: ...

    async def wait(self, call_id: str) -> str | None: ...

    def cancel_soon(self, call_id: str) -> None: ...

    def release(
        self, call_id: str, upstream: str, *, rank: int, tenant: str, correction: float
    ) -> None: ...

    async def view(
        self, upstreams: Sequence[str]
    ) -> list[tuple[str, list[str], list[str], float]]: ...

    async def check(self) -> None:
        """Ask the store now (at startup), so that the log says at once whether it answers."""
        ...

    async def aclose(self) -> None: ...
