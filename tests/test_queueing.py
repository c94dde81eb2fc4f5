"""The fair queue: its order (classes, keys by deficit round-robin, weights), its bounds and
Retry-After, a waiter that leaves, positions, and the caps an upstream reports; with the
scripted upstreams of tests/test_upstreams_router.py in this process."""

from __future__ import annotations

import asyncio

import pytest

from calls.errors import KeyQueueFull, UpstreamBusy
from calls.types import Answer, CallRequest
from queueing import Line, Place, current, priority_of
from queueing.place import PriorityError, served
from upstreams.router import Router

from .test_upstreams_router import Fake, ask, eventually, router

pytestmark = pytest.mark.anyio


def start(routed: Router, place: Place) -> asyncio.Future[Answer]:
    """A whole answer asked as `place` (the pipeline hands it over the same way)."""
    token = current.set(place)
    try:
        return asyncio.ensure_future(routed.answer(ask()))
    finally:
        current.reset(token)


def place(tenant: str, served_order: list[str], name: str = "", **options: object) -> Place:
    label = name or tenant
    return Place(
        tenant=tenant,
        key_label=label,
        on_grant=lambda _seconds: served_order.append(label),
        **options,  # type: ignore[arg-type]
    )


class Clock:
    """Slot-seconds as the test says: each call holds its slot for exactly one second."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Timed(Fake):
    """An upstream whose every answer takes one second of the test's clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("a", ["llama3"], loaded=["llama3"])
        self.clock = clock

    async def answer(self, request: CallRequest) -> Answer:
        result = await super().answer(request)
        self.clock.now += 1.0
        return result


async def held_line(cap: int = 1, **options: object) -> tuple[Fake, Router, list[str]]:
    """An upstream at its cap: `cap` calls hold its slots until `fake.hold` is set."""
    clock = Clock()
    fake = Timed(clock)
    fake.hold = asyncio.Event()
    routed = router(fake, caps={"a": cap}, **options)
    routed.line.clock = clock
    order: list[str] = []
    for i in range(cap):
        start(routed, place(f"holder{i}", order))

    async def full() -> bool:
        return (await routed.health())[0].in_flight == cap

    await eventually(full)
    return fake, routed, order


async def queue_up(routed: Router, places: list[Place]) -> list[asyncio.Future[Answer]]:
    """Each place asks, in this order, and waits in line."""
    calls = []
    before = len(routed.line.waiting)
    for p in places:
        calls.append(start(routed, p))

        async def joined(n: int = before + len(calls)) -> bool:
            return len(routed.line.waiting) == n

        await eventually(joined)
    return calls


async def drain(fake: Fake, calls: list[asyncio.Future[Answer]]) -> None:
    assert fake.hold is not None
    fake.hold.set()
    await asyncio.gather(*calls)


async def test_an_interactive_call_goes_before_every_waiting_batch_call() -> None:
    fake, routed, order = await held_line()
    batch = [place("k:batch", order, f"b{i}", priority="batch") for i in range(5)]
    calls = await queue_up(routed, [*batch, place("k:chat", order, "chat")])

    await drain(fake, calls)

    assert order == ["holder0", "chat", "b0", "b1", "b2", "b3", "b4"]


async def test_keys_take_turns_whoever_sent_more() -> None:
    fake, routed, order = await held_line()
    many = [place("k:a", order, f"a{i}") for i in range(6)]
    few = [place("k:b", order, f"b{i}") for i in range(2)]
    calls = await queue_up(routed, [*many, *few])

    await drain(fake, calls)

    # a's six came first, yet b's two are served within a's first three.
    assert order[1:] == ["a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"]


async def test_a_weight_is_a_share() -> None:
    fake, routed, order = await held_line()
    heavy = [place("k:h", order, f"h{i}", weight=2.0) for i in range(6)]
    light = [place("k:l", order, f"l{i}") for i in range(3)]
    calls = await queue_up(routed, [*light, *heavy])

    await drain(fake, calls)

    served_first_six = order[1:7]
    assert sum(x.startswith("h") for x in served_first_six) == 4
    assert sum(x.startswith("l") for x in served_first_six) == 2


async def test_fifo_order_is_arrival_order() -> None:
    fake, routed, order = await held_line(order="fifo")
    places = [place("k:a", order, f"a{i}", priority="batch") for i in range(3)]
    places.append(place("k:b", order, "b0"))
    calls = await queue_up(routed, places)

    await drain(fake, calls)

    assert order[1:] == ["a0", "a1", "a2", "b0"]


async def test_a_key_past_its_share_of_the_line_gets_429_with_retry_after() -> None:
    fake, routed, order = await held_line(per_key=2)
    calls = await queue_up(routed, [place("k:a", order), place("k:a", order)])

    with pytest.raises(KeyQueueFull, match="--queue-per-key") as refused:
        await start(routed, place("k:a", order))
    other = await queue_up(routed, [place("k:b", order)])  # another key still may

    assert refused.value.status == 429
    assert refused.value.retry_after is not None
    assert refused.value.retry_after >= 1
    await drain(fake, calls + other)


async def test_a_full_line_is_503_with_retry_after_from_the_drain_rate() -> None:
    fake, routed, order = await held_line(max_waiting=2)
    calls = await queue_up(routed, [place("k:a", order), place("k:b", order)])
    routed.line.interval = 4.0  # one call leaves the line every 4 s, as measured

    with pytest.raises(UpstreamBusy) as refused:
        await start(routed, place("k:c", order))

    assert refused.value.status == 503
    assert refused.value.retry_after == 8  # two calls ahead, at 4 s each
    await drain(fake, calls)


async def test_the_drain_rate_is_measured_between_hand_overs() -> None:
    fake, routed, order = await held_line()
    calls = await queue_up(routed, [place(f"k:{i}", order) for i in range(4)])
    before = routed.line.interval

    await drain(fake, calls)

    after = routed.line.interval
    assert before is None
    assert after is not None
    assert 0 <= after < 5


async def test_a_waiter_that_leaves_is_gone_at_once_and_nothing_reached_the_upstream() -> None:
    fake, routed, order = await held_line()
    calls = await queue_up(routed, [place("k:a", order, "a"), place("k:b", order, "b")])
    asked_before = len(fake.calls)

    calls[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await calls[0]

    assert [w.place.key_label for w in routed.line.waiting] == ["b"]
    assert len(fake.calls) == asked_before
    await drain(fake, calls[1:])
    assert order == ["holder0", "b"]
    assert (await routed.health())[0].in_flight == 0


async def test_positions_follow_the_fair_order() -> None:
    fake, routed, order = await held_line()
    a = [place("k:a", order, f"a{i}") for i in range(3)]
    b = place("k:b", order, "b0")
    batch = place("k:c", order, "c0", priority="batch")
    calls = await queue_up(routed, [*a, batch, b])

    standings = {p.key_label: p.standing() for p in [*a, batch, b]}

    assert standings == {
        "a0": (1, 0),
        "b0": (2, 1),
        "a1": (3, 2),
        "a2": (4, 3),
        "c0": (5, 4),
    }
    await drain(fake, calls)
    assert all(p.standing() is None for p in [*a, batch, b])
    assert all((p.queue_seconds or 0) >= 0 for p in [*a, batch, b])


async def test_the_queue_view_lists_running_and_waiting_calls() -> None:
    fake, routed, order = await held_line()
    calls = await queue_up(
        routed, [place("k:a", order, "a0", project="p1"), place("k:b", order, "b0")]
    )

    view = await routed.queue()

    assert view.order == "fair"
    [line] = view.queues
    assert (line.upstream, line.model, line.cap) == ("a", "llama3", 1)
    assert [c.key_label for c in line.running] == ["holder0"]
    assert [(c.key_label, c.project, c.position) for c in line.waiting] == [
        ("a0", "p1", 1),
        ("b0", None, 2),
    ]
    await drain(fake, calls)


async def test_a_server_that_reports_its_slots_is_capped_by_them() -> None:
    reports = Fake("reports", ["llama3"])
    reports.slots = 2
    silent = Fake("silent", ["llama3"])
    configured = Fake("configured", ["llama3"])
    configured.slots = 8

    health = await router(reports, silent, configured, caps={"configured": 3}).health()

    assert [(h.capacity, h.fairness) for h in health] == [
        (2, "on (server cap)"),
        (None, "off: no cap, calls are forwarded as they come"),
        (3, "on (configured cap)"),
    ]


async def test_a_call_asked_without_a_place_waits_as_anyone() -> None:
    fake, routed, _order = await held_line()
    anonymous = asyncio.ensure_future(routed.answer(ask()))

    async def joined() -> bool:
        return len(routed.line.waiting) == 1

    await eventually(joined)
    assert routed.line.waiting[0].place.tenant == ""
    await drain(fake, [anonymous])


def test_x_priority_lowers_never_raises() -> None:
    assert priority_of(None) is None
    assert priority_of(" Batch ") == "batch"
    with pytest.raises(PriorityError, match="interactive or batch"):
        priority_of("urgent")
    assert served("interactive", "batch") == "batch"
    assert served("batch", "interactive") == "batch"
    assert served("batch", None) == "batch"


def test_a_line_forgets_idle_tenants_but_stays_bounded() -> None:
    line = Line()
    for i in range(5000):
        p = Place(tenant=f"p:{i}")
        p.seq = i
        line.charge(p, handed=True)
    assert len(line._finish) <= 4096
