"""What GET /api/v1/admin/queue shows: per upstream and model, the calls running on it and the
calls waiting for it."""

from __future__ import annotations

import msgspec

from .place import Place


class QueuedCall(msgspec.Struct, kw_only=True):
    """One call holding or awaiting a slot."""

    key_label: str | None
    project: str | None
    priority: str
    # Seconds it waited for its slot (running), or has waited so far (waiting).
    waited_seconds: float
    # Running: seconds since it got its slot. Waiting: its place in line (1: next).
    running_seconds: float | None = None
    position: int | None = None

    @classmethod
    def of(cls, place: Place, now: float, position: int | None = None) -> QueuedCall:
        return cls(
            key_label=place.key_label,
            project=place.project,
            priority=place.priority,
            waited_seconds=round(place.waited(now), 3),
            running_seconds=(
                None if place.granted is None else round(max(0.0, now - place.granted), 3)
            ),
            position=position,
        )


class ModelQueue(msgspec.Struct, kw_only=True):
    upstream: str
    model: str
    cap: int | None
    running: list[QueuedCall]
    waiting: list[QueuedCall]


class QueueView(msgspec.Struct, kw_only=True):
    """The fair queue now. A call that could go to several upstreams waits under each."""

    order: str
    # "local", "redis", or why Redis is not used now.
    shared: str
    queues: list[ModelQueue]
