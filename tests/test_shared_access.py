"""Access shared by several gateways: keys, the admin token and the fingerprint secret in
PostgreSQL (access/pg_keys.py); limits and stream tickets in Redis (access/redis_shared.py).

Two gateways here are two apps in this process on one database and one Redis; the same with
real processes behind nginx is in test_scale.py. Redis "stops" by a proxy being cut.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from access import redis_shared
from access.keys import KeyLimits
from access.pg_keys import DatabaseKeyRing
from access.redis_shared import RedisShared
from tests import pg, redis_server
from tests.asgi import Local, in_process
from tests.helpers import ask
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def two(dsn: str, tmp_path: Path) -> AsyncIterator[tuple[Local, Local]]:
    """Two gateways sharing one database and one Redis."""
    redis_server.require()
    flags = ("--store", dsn, "--redis", redis_server.URL)
    async with (
        in_process(tmp_path / "a", *flags) as a,
        in_process(tmp_path / "b", *flags) as b,
    ):
        yield a, b


async def eventually(done: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 10
    while not await done():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.02)


async def asks(local: Local, key: str) -> httpx.Response:
    async with local.client(admin=False, Authorization=f"Bearer {key}") as client:
        return await client.post(
            "/api/v1/ai/ask_sync", json=ask(), headers={"Accept": "application/json"}
        )


async def new_key(local: Local, **body: object) -> tuple[str, str]:
    async with local.client() as client:
        made = await client.post("/api/v1/admin/keys", json={"label": "shared", **body})
    assert made.status_code == 201, made.text
    return made.json()["key"], made.json()["info"]["id"]


# -- keys in the database ---------------------------------------------------------------------


async def knows(local: Local, key_id: str) -> bool:
    async with local.client() as client:
        listed = await client.get("/api/v1/admin/keys")
    return key_id in {key["id"] for key in listed.json()}


async def test_a_key_made_through_one_gateway_works_on_the_other(two: tuple[Local, Local]) -> None:
    a, b = two
    _, first = await new_key(a)
    # Until a gateway knows of some key, it lets anyone ask: wait for that first.
    await eventually(lambda: knows(b, first), "the other gateway knows the first key")
    key, _ = await new_key(a)

    async def works_on_b() -> bool:
        return (await asks(b, key)).status_code == 200

    await eventually(works_on_b, "the key works on the other gateway")
    assert (await asks(a, key)).status_code == 200
    assert (await asks(b, "ohk_00000000_made-up")).status_code == 401


async def test_a_key_revoked_through_one_gateway_stops_on_the_other(
    two: tuple[Local, Local],
) -> None:
    a, b = two
    key, key_id = await new_key(a)
    await eventually(lambda: knows(b, key_id), "the other gateway knows the key")
    assert (await asks(b, key)).status_code == 200
    async with b.client() as client:
        revoked = await client.delete(f"/api/v1/admin/keys/{key_id}")
    assert revoked.status_code == 200, revoked.text

    async def refused_on_a() -> bool:
        return (await asks(a, key)).status_code == 401

    await eventually(refused_on_a, "the revoked key is refused on the other gateway")
    assert (await asks(b, key)).status_code == 401


def test_a_revocation_made_elsewhere_survives_an_update_from_a_gateway_that_missed_it(
    dsn: str,
) -> None:
    first, _ = pg.access_of(dsn, "token")
    second, _ = pg.access_of(dsn, "token")
    try:
        key, _ = asyncio.run(first.keys.create("k", None, KeyLimits()))
        assert isinstance(second.keys, DatabaseKeyRing)
        second.keys.refresh()
        stale = second.keys.get(key.id)
        assert stale is not None
        asyncio.run(first.keys.update(msgspec.structs.replace(key, revoked="2026-12-01")))
        # The second gateway has not seen it yet, and renames the key it knows.
        asyncio.run(second.keys.update(msgspec.structs.replace(stale, label="renamed")))
        found = second.keys.get(key.id)
        first.keys.close()
        reread, _ = pg.access_of(dsn, "token")
        stored = reread.keys.get(key.id)
        reread.close()
    finally:
        first.close()
        second.close()

    assert found is not None
    assert stored is not None
    assert (found.label, found.revoked) == ("renamed", "2026-12-01")
    assert (stored.label, stored.revoked) == ("renamed", "2026-12-01")


def test_every_gateway_agrees_on_the_secret_and_follows_a_new_admin_token(dsn: str) -> None:
    first, token = pg.access_of(dsn, None)
    second, again = pg.access_of(dsn, None)
    try:
        assert token is not None
        assert again is None  # made once, by the first to start
        assert first.secret == second.secret
        assert second.admin.check_token(token)
        third, reset = pg.access_of(dsn, None, reset=True)
        third.close()
        assert reset is not None
        assert isinstance(second.keys, DatabaseKeyRing)
        second.keys.refresh()
        assert second.admin.check_token(reset)
        assert not second.admin.check_token(token)
    finally:
        first.close()
        second.close()


# -- limits and tickets in Redis --------------------------------------------------------------


@pytest.fixture
async def shared_pair() -> AsyncIterator[tuple[RedisShared, RedisShared]]:
    redis_server.require()
    scope = "test-" + secrets.token_hex(6)
    a, b = RedisShared(redis_server.URL, scope), RedisShared(redis_server.URL, scope)
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_two_gateways_never_both_admit_the_last_request_of_a_minute(
    shared_pair: tuple[RedisShared, RedisShared],
) -> None:
    a, b = shared_pair
    began = time.monotonic()

    waits = await asyncio.gather(*(g.take("key:k", 10) for _ in range(15) for g in (a, b)))

    admitted = sum(1 for wait in waits if wait == 0)
    refilled = int((time.monotonic() - began) * 10 / 60)  # the bucket refills 1 per 6 s
    assert 10 <= admitted <= 10 + refilled
    assert a.health().status == "ok"


async def test_tokens_per_day_add_up_across_gateways(
    shared_pair: tuple[RedisShared, RedisShared],
) -> None:
    a, b = shared_pair

    await a.spend("project:p", 100)
    await b.spend("project:p", 20)

    assert await a.spent_today("project:p") == await b.spent_today("project:p") == 120


async def test_open_streams_are_counted_across_gateways_and_a_dead_ones_go_back(
    shared_pair: tuple[RedisShared, RedisShared], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = shared_pair
    assert await a.enter("all", 3)
    assert await a.enter("all", 3)
    assert await b.enter("all", 3)
    assert not await b.enter("all", 3)
    assert not await a.enter("all", 3)
    await a.leave("all")
    assert await b.enter("all", 3)

    # A gateway killed with a stream open: its heartbeat lapses and its place comes back.
    monkeypatch.setattr(redis_shared, "ALIVE_MS", 300)
    dead = RedisShared(redis_server.URL, a._prefix.split(":")[1])
    assert await dead.enter("key:x", 1)
    assert dead._beat is not None
    dead._beat.cancel()  # killed: no more heartbeats, no leave
    assert not await b.enter("key:x", 1)

    async def admitted() -> bool:
        return await b.enter("key:x", 1)

    try:
        await eventually(admitted, "the dead gateway's stream place comes back")
    finally:
        await dead.aclose()  # the test's own connection, not the gateway's places


async def test_a_ticket_issued_by_one_gateway_is_redeemed_once_at_another(
    shared_pair: tuple[RedisShared, RedisShared],
) -> None:
    a, b = shared_pair
    ticket = await a.issue("key-1")

    assert await b.redeem(ticket) == "key-1"
    assert await a.redeem(ticket) is None
    assert await b.redeem("made-up") is None


async def test_with_redis_away_the_gateway_counts_alone_and_says_so() -> None:
    redis_server.require()
    with TcpProxy("127.0.0.1", 6379) as proxy:
        shared = RedisShared(redis_server.through(proxy.port), "test-" + secrets.token_hex(6))
        try:
            assert await shared.take("key:k", 2) == 0
            proxy.cut()
            local = [await shared.take("key:k", 2) for _ in range(3)]
            away = shared.health()
            ticket = await shared.issue("holder")
            proxy.restore()

            async def back() -> bool:
                await shared.take("key:other", 100)
                return shared.health().status == "ok"

            await eventually(back, "Redis is used again")
            redeemed = await shared.redeem(ticket)
        finally:
            await shared.aclose()

    assert local[:2] == [0, 0]  # counted alone, from a full bucket: nothing refused wrongly
    assert local[2] > 0  # but the limit still holds, in this gateway
    assert away.status == "degraded"
    assert away.error is not None
    assert f"127.0.0.1:{proxy.port}" in away.error
    assert redeemed == "holder"  # issued alone, redeemed here once it was back


async def test_health_says_where_limits_are_counted(two: tuple[Local, Local]) -> None:
    a, _ = two
    async with a.client() as client:
        health = (await client.get("/health")).json()

    assert health["limits"] == {
        "status": "ok",
        "shared": redis_server.URL,
        "error": None,
        "local_admissions": 0,
        "last_local_admission": None,
    }
