"""API keys kept in PostgreSQL, as two real gateways on one database and one Redis see them.

Each gateway keeps the keys in memory and re-reads them when its watch sees them change
(access/pg_keys.py). These tests are about a key the watch has not brought yet: the other
gateway must know it, with its limits, from the first call that presents it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from access.identity import Caller, Credentials, identify
from access.keys import Access, ApiKey, KeyLimits
from access.pg_keys import DatabaseKeyRing
from calls.errors import CallError
from tests import pg, redis_server
from tests.gateway_proc import ADMIN_TOKEN, start_gateway
from tests.helpers import ask
from tests.ollama_standin import StandIn
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Accept": "application/json"}


@contextlib.contextmanager
def watches_held(dsn: str) -> Iterator[None]:
    """Hold every gateway's key watch still: its read of the keys' version (which also reads
    the admin token's row in `secrets`) waits on this lock until the block ends. A test then
    does not depend on when a watch happens to poll: no gateway learns of a change by its
    watch meanwhile. Asking, making keys and the usage log never touch `secrets`."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("LOCK TABLE ollama_host.secrets IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    # Each a new httpx.post, as in the report: a new connection every time.
    return httpx.post(f"{url}/api/v1/ai/ask_sync", json=body, headers=headers, timeout=10)


@pytest.mark.server
@pytest.mark.redis
def test_a_key_made_through_one_gateway_is_limited_on_the_other_from_its_first_call(
    standin: StandIn, tmp_path: Path, dsn: str
) -> None:
    redis_server.require()
    args = ["--ollama", standin.url, "--store", dsn, "--redis", redis_server.URL]
    shared = redis.Redis.from_url(redis_server.URL)
    with (
        start_gateway(tmp_path / "1" / "data", *args) as one,
        start_gateway(tmp_path / "2" / "data", *args) as two,
    ):
        for gateway in (one, two):
            for _ in range(20):
                assert post(gateway.url, ask(project="both"), JSON).status_code == 200
        with watches_held(dsn):
            made = httpx.post(
                f"{one.url}/api/v1/admin/keys",
                json={"label": "ten", "limits": {"rpm": 10}},
                headers=ADMIN,
            )
            assert made.status_code == 201, made.text
            key, key_id = made.json()["key"], made.json()["info"]["id"]
            bucket = [k for k in shared.keys(f"ollama-host:*:rpm:key:{key_id}")]
            holder = {**JSON, "Authorization": f"Bearer {key}"}
            statuses: list[int] = []
            levels: list[float] = []
            ids: list[str] = []
            began = time.monotonic()
            for gateway in [two] + [two, one] * 6:
                answered = post(gateway.url, ask(), holder)
                statuses.append(answered.status_code)
                if answered.status_code == 200:
                    ids.append(answered.json()["id"])
                found = [k for k in shared.keys(f"ollama-host:*:rpm:key:{key_id}")]
                level = shared.hget(found[0], "level") if found else None
                levels.append(float(level) if level is not None else 10.0)
            refilled = int((time.monotonic() - began) * 10 / 60)  # one every 6 s
        health = httpx.get(f"{two.url}/health").json()
        logs = two.logs()

    assert bucket == []  # the key was new: nobody had taken from its bucket
    assert statuses[:10] == [200] * 10
    assert statuses.count(200) <= 10 + refilled  # 13 in the report
    assert 429 in statuses or refilled >= 3
    # Every admitted call took one from the bucket the gateways share, the first one too
    # (less what the bucket refilled meanwhile: 10/60 a second).
    before = [10.0, *levels[:-1]]
    taken = [b - a for b, a, status in zip(before, levels, statuses, strict=True) if status == 200]
    assert all(0.5 < took < 1.001 for took in taken), (statuses, levels)
    keyed = pg.column(dsn, "SELECT id FROM ollama_host.usage WHERE key_id = %s", key_id)
    assert sorted(str(i) for i in keyed) == sorted(ids)  # each accounted to the key
    assert health["limits"]["status"] == "ok"
    assert "Traceback" not in logs


# -- one gateway's view, in this process ------------------------------------------------------


@pytest.fixture
def rings(dsn: str) -> Iterator[tuple[Access, Access]]:
    """Two gateways' access state on one database: `made` makes keys, `other` has read none."""
    made, _ = pg.access_of(dsn, ADMIN_TOKEN)
    other, _ = pg.access_of(dsn, ADMIN_TOKEN)
    try:
        yield made, other
    finally:
        made.close()
        other.close()


def create(access: Access, **limits: int) -> tuple[ApiKey, str]:
    return asyncio.run(access.keys.create("new", None, KeyLimits(**limits)))


def test_a_key_the_watch_has_not_brought_is_read_at_its_first_call(
    rings: tuple[Access, Access], dsn: str
) -> None:
    made, other = rings
    with watches_held(dsn):
        key, plain = create(made, rpm=10)
        unknown_before = other.keys.get(key.id)
        caller = asyncio.run(identify(other, Credentials(bearer=plain)))

    assert unknown_before is None
    assert caller.key is not None
    assert (caller.key.id, caller.key.limits.rpm) == (key.id, 10)
    assert other.keys.get(key.id) == caller.key  # and kept


def test_a_made_up_key_is_ignored_while_no_key_is_known_and_refused_after(
    rings: tuple[Access, Access], dsn: str
) -> None:
    made, other = rings
    made_up = Credentials(bearer="ohk_00000000_made-up")
    anyone = asyncio.run(identify(other, made_up))
    with watches_held(dsn):
        _, plain = create(made)
        asyncio.run(identify(other, Credentials(bearer=plain)))  # learnt: keys exist now
        with pytest.raises(CallError) as refused:
            asyncio.run(identify(other, made_up))

    assert anyone == Caller()  # no key anywhere: anyone may ask, as before
    assert refused.value.status == 401


def test_a_ticket_for_a_key_the_watch_has_not_brought_is_redeemed(
    rings: tuple[Access, Access], dsn: str
) -> None:
    made, other = rings
    with watches_held(dsn):
        key, _ = create(made)

        async def redeemed() -> Caller:
            # As a ticket issued by the gateway that made the key, redeemed here (Redis
            # shares them; the holder is the key's id).
            ticket = await other.tickets.issue(key.id)
            return await identify(other, Credentials(ticket=ticket))

        caller = asyncio.run(redeemed())

    assert caller.key is not None
    assert caller.key.id == key.id


def test_a_key_not_yet_read_while_the_database_is_away_is_answered_503(
    tmp_path: Path, dsn: str
) -> None:
    with TcpProxy("127.0.0.1", 5432) as proxy:
        made, _ = pg.access_of(dsn, ADMIN_TOKEN)
        away, _ = pg.access_of(pg.dsn_of(dsn.rsplit("/", 1)[1], port=proxy.port), ADMIN_TOKEN)
        try:
            known, known_plain = create(made)
            assert isinstance(away.keys, DatabaseKeyRing)
            away.keys.refresh()
            proxy.cut()
            _, plain = create(made)
            with pytest.raises(CallError) as unanswered:
                asyncio.run(identify(away, Credentials(bearer=plain)))
            # The keys it read before stay in force.
            still = asyncio.run(identify(away, Credentials(bearer=known_plain)))
        finally:
            made.close()
            away.close()

    assert (unanswered.value.status, unanswered.value.code) == (503, "store_unavailable")
    assert f"127.0.0.1:{proxy.port}" in unanswered.value.message
    assert still.key is not None
    assert still.key.id == known.id
