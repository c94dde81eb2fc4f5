"""Caps and the fair queue shared through Redis (queueing/shared.py) by several gateways,
here several routers in this process on the machine's Redis: the cap holds across them, the
fair order holds across them, a gateway that dies gives its slots back by itself, and with
Redis away each falls back to its own line."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from calls.errors import UpstreamBusy
from calls.types import Answer, CallRequest
from queueing import Place, current
from queueing import shared as shared_module
from queueing.shared import SharedSlots
from tests import redis_server
from tests.tcp_proxy import TcpProxy
from upstreams.router import Router

from .test_upstreams_router import Fake, ask, eventually, router

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


class Server:
    """One model server seen by several gateways: how many calls it runs at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.hold = asyncio.Event()
        self.service = 0.0


class Seen(Fake):
    """A gateway's view of the one server: its calls count on the server's own counter."""

    def __init__(self, server: Server) -> None:
        super().__init__("gpu", ["llama3"], loaded=["llama3"])
        self.server = server

    async def answer(self, request: CallRequest) -> Answer:
        self.server.running += 1
        self.server.peak = max(self.server.peak, self.server.running)
        try:
            await self.server.hold.wait()
            # A call takes a while: longer than a gateway takes to collect a grant (its pump).
            await asyncio.sleep(self.server.service)
            return await super().answer(request)
        finally:
            self.server.running -= 1


@pytest.fixture
async def gateways() -> AsyncIterator[tuple[Server, list[Router]]]:
    """Two gateways sharing Redis, before one server with cap=2."""
    redis_server.require()
    scope = secrets.token_hex(6)
    server = Server()
    routers = []
    for _ in range(2):
        routed = router(Seen(server), caps={"gpu": 2})
        routed.share(SharedSlots(redis_server.URL, scope))
        routers.append(routed)
    yield server, routers
    server.hold.set()
    for routed in routers:
        await routed.aclose()


def start(routed: Router, place: Place) -> asyncio.Future[Answer]:
    token = current.set(place)
    try:
        return asyncio.ensure_future(routed.answer(ask()))
    finally:
        current.reset(token)


def named(tenant: str, order: list[str], label: str, **options: object) -> Place:
    return Place(
        tenant=tenant,
        key_label=label,
        on_grant=lambda _s: order.append(label),
        **options,  # type: ignore[arg-type]
    )


async def test_a_full_shared_line_says_when_to_retry_by_its_slots() -> None:
    redis_server.require()
    server = Server()
    routed = router(Seen(server), caps={"gpu": 2}, max_waiting=2)
    shared = SharedSlots(redis_server.URL, secrets.token_hex(6))
    routed.share(shared)
    calls = [start(routed, Place(tenant=f"k{i}")) for i in range(2)]
    try:

        async def both_run() -> bool:
            return server.running == 2

        async def line_full() -> bool:
            return shared.waiting_count() == 2

        # The two that wait come once both slots are taken, so that every count is settled.
        await eventually(both_run)
        calls += [start(routed, Place(tenant=f"k{i}")) for i in range(2, 4)]
        await eventually(line_full)
        with pytest.raises(UpstreamBusy) as raised:
            await routed.answer(ask())

        # Two slots drain two waiting calls in one call's time (1 s before any was measured),
        # as the local line reckons: by the slots, not by the number of upstreams.
        assert raised.value.retry_after == routed.line.retry_after(2, 2) == 1
    finally:
        server.hold.set()
        await asyncio.gather(*calls)
        await routed.aclose()


async def test_calls_still_asking_redis_do_not_fill_the_shared_line() -> None:
    redis_server.require()
    server = Server()
    routed = router(Seen(server), caps={"gpu": 2}, max_waiting=2)
    shared = SharedSlots(redis_server.URL, secrets.token_hex(6))
    routed.share(shared)
    # Four at once: while the first two still ask Redis for their free slots, the other two
    # find no call waiting yet, so they join the line rather than being refused.
    calls = [start(routed, Place(tenant=f"k{i}")) for i in range(4)]
    try:

        async def settled() -> bool:
            return server.running == 2 and shared.waiting_count() == 2

        await eventually(settled)
        assert not any(call.done() for call in calls)
    finally:
        server.hold.set()
        await asyncio.gather(*calls)
        await routed.aclose()


async def test_the_cap_holds_across_gateways(gateways: tuple[Server, list[Router]]) -> None:
    server, (a, b) = gateways
    order: list[str] = []
    calls = [start(a if i % 2 else b, named(f"k{i}", order, f"c{i}")) for i in range(8)]

    async def two_run() -> bool:
        return server.running == 2

    await eventually(two_run)
    await asyncio.sleep(0.3)  # every gateway has pumped meanwhile
    assert server.running == 2
    view = await a.queue()
    assert view.shared.startswith("redis at ")
    assert len(view.queues) == 1, view
    [line] = view.queues
    assert (len(line.running), len(line.waiting)) == (2, 6)
    assert all(c.running_seconds is not None for c in line.running)
    assert [c.position for c in line.waiting] == [1, 2, 3, 4, 5, 6]
    assert {c.key_label for c in line.running + line.waiting} == {f"c{i}" for i in range(8)}
    server.hold.set()
    await asyncio.gather(*calls)

    assert server.peak == 2
    assert sorted(order) == sorted(f"c{i}" for i in range(8))


async def test_the_fair_order_holds_across_gateways(
    gateways: tuple[Server, list[Router]],
) -> None:
    server, (a, b) = gateways
    server.service = 0.2
    order: list[str] = []
    running = [start(a, named("k:hold", order, f"h{i}")) for i in range(2)]

    async def full() -> bool:
        return server.running == 2

    await eventually(full)
    batch = [start(a, named("k:batch", order, f"b{i}", priority="batch")) for i in range(6)]
    await asyncio.sleep(0.2)
    chat = start(b, named("k:chat", order, "chat"))
    await asyncio.sleep(0.2)
    server.hold.set()
    await asyncio.gather(*running, *batch, chat)

    # The two slots the holders free go to the heads of the shared line: the interactive call
    # (from the other gateway) and the first batch call.
    assert sorted(order[:2]) == ["h0", "h1"]
    assert "chat" in order[2:4], order


async def test_a_dead_gateways_slots_come_back_by_themselves(
    gateways: tuple[Server, list[Router]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, (a, b) = gateways
    order: list[str] = []
    dead = [start(a, named("k:a", order, f"a{i}")) for i in range(2)]

    async def full() -> bool:
        return server.running == 2

    await eventually(full)
    # Gateway a "dies": its calls vanish, its leases are never renewed nor given back.
    shared_a = a.shared
    assert isinstance(shared_a, SharedSlots)
    for task in (shared_a._renewing, shared_a._pumping):
        if task is not None:
            task.cancel()
    shared_a.held.clear()
    for call in dead:
        call.cancel()
    monkeypatch.setattr(shared_a, "release", lambda *args, **kwargs: None)
    monkeypatch.setattr(shared_a, "cancel_soon", lambda *args: None)
    server.running = 0  # the server finished them; the gateway never said so
    server.hold.set()
    began = time.monotonic()
    alive = start(b, named("k:b", order, "b0"))

    await alive
    waited = time.monotonic() - began

    assert shared_module.LEASE_SECONDS - 1 <= waited <= shared_module.LEASE_SECONDS + 2
    assert server.peak == 2


async def test_with_redis_away_each_gateway_uses_its_own_line() -> None:
    redis_server.require()
    host, port = "127.0.0.1", int(redis_server.URL.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy(host, port) as proxy:
        fake = Fake("gpu", ["llama3"], loaded=["llama3"])
        routed = router(fake, caps={"gpu": 1})
        shared = SharedSlots(redis_server.through(proxy.port), secrets.token_hex(6))
        routed.share(shared)
        assert (await routed.answer(ask())).content == "a b "
        assert (await routed.health())[0].shared == f"redis at {shared.address}"

        proxy.cut()
        answer = await routed.answer(ask())

        assert answer.content == "a b "
        health = (await routed.health())[0]
        assert health.shared is not None
        assert health.shared.startswith("local: Redis at")
        assert (await routed.queue()).shared.startswith("local: ")
        await routed.aclose()
