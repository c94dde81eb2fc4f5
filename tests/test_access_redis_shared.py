"""Limits shared through Redis (access/redis_shared.py) when Redis fails: every failure falls
back to this gateway's own counts, and each admission decided that way is reported.

Redis fails through a TCP proxy of the test's own (tests/tcp_proxy.py), never the machine's
server: cut (connections reset, then refused) or reset (connections reset, new ones
accepted).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from access import redis_shared
from access.redis_shared import RedisShared
from tests import redis_server
from tests.gateway_proc import ADMIN_TOKEN, start_gateway
from tests.helpers import ask
from tests.ollama_standin import StandIn
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Accept": "application/json"}


@pytest.mark.server
def test_each_admission_decided_without_redis_shows_in_health_and_its_log_line(
    standin: StandIn, tmp_path: Path
) -> None:
    redis_server.require()
    with TcpProxy("127.0.0.1", 6379) as proxy:
        args = ["--ollama", standin.url, "--redis", redis_server.through(proxy.port)]
        with start_gateway(tmp_path / "data", *args, "--key-rpm", "100") as gateway:
            key = httpx.post(
                f"{gateway.url}/api/v1/admin/keys", json={"label": "k"}, headers=ADMIN
            ).json()["key"]
            holder = {**JSON, "Authorization": f"Bearer {key}"}

            def asked() -> str:
                answered = httpx.post(
                    f"{gateway.url}/api/v1/ai/ask_sync", json=ask(), headers=holder
                )
                assert answered.status_code == 200, answered.text
                return str(answered.headers["x-request-id"])

            shared = asked()
            before = httpx.get(f"{gateway.url}/health").json()["limits"]
            proxy.cut()
            alone = [asked() for _ in range(3)]
            after = httpx.get(f"{gateway.url}/health").json()["limits"]
            logs = gateway.logs()

    assert (before["local_admissions"], before["last_local_admission"]) == (0, None)
    assert after["status"] == "degraded"
    assert after["local_admissions"] == 3
    assert after["last_local_admission"] is not None
    lines = {
        line.split("id=")[1].split()[0]: line
        for line in logs.splitlines()
        if " request id=" in line
    }
    assert "limits=local" not in lines[shared]
    assert all("limits=local" in lines[request] for request in alone)
    assert "admission(s) decided by this gateway's own counts" in logs
    assert "Traceback" not in logs


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """uvloop, as the gateway runs: it raises its own RuntimeError for a write to a closed
    connection, where asyncio's loop drops the write."""
    return ("asyncio", {"use_uvloop": True})


@pytest.mark.faults
@pytest.mark.anyio
async def test_connections_reset_under_load_fall_back_and_never_fail_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_server.require()
    # Redis is tried again at once after each failure, so that every reset meets steps in
    # flight on the connections it resets.
    monkeypatch.setattr(redis_shared, "RETRY_SECONDS", 0.02)
    failures: collections.Counter[str] = collections.Counter()
    steps = 0
    resets = 0
    with TcpProxy("127.0.0.1", 6379) as proxy:
        shared = RedisShared(redis_server.through(proxy.port), "test-" + secrets.token_hex(6))
        stopping = anyio.Event()

        async def asking() -> None:
            nonlocal steps
            while not stopping.is_set():
                try:
                    # What one streamed call does: admit, open a stream, spend, close it.
                    await shared.spent_today("key:k")
                    await shared.take("key:k", 1_000_000)
                    if await shared.enter("key:k", 0):
                        await shared.leave("key:k")
                    await shared.spend("key:k", 3)
                    steps += 1
                except Exception as exc:  # any failure at all is what this test looks for
                    failures[f"{type(exc).__name__}: {exc}"[:200]] += 1
                await asyncio.sleep(0)

        try:
            async with anyio.create_task_group() as tasks:
                for _ in range(64):
                    tasks.start_soon(asking)
                for _ in range(40):
                    await anyio.sleep(0.06)
                    resets += await anyio.to_thread.run_sync(proxy.reset)
                stopping.set()
            # After the last reset, Redis is used again.
            deadline = time.monotonic() + 10
            while shared.health().status != "ok" and time.monotonic() < deadline:
                await anyio.sleep(0.05)
                await shared.take("key:again", 10)
            health = shared.health()
        finally:
            await shared.aclose()

    assert not failures, failures
    assert resets >= 40  # connections were reset, with steps on them
    assert steps > 0
    assert health.status == "ok"


@pytest.mark.faults
@pytest.mark.server
def test_a_redis_connection_reset_never_gives_a_caller_a_500(
    standin: StandIn, tmp_path: Path
) -> None:
    redis_server.require()
    with TcpProxy("127.0.0.1", 6379) as proxy:
        args = ["--ollama", standin.url, "--redis", redis_server.through(proxy.port)]
        with start_gateway(tmp_path / "data", *args, "--key-rpm", "1000000") as gateway:
            key = httpx.post(
                f"{gateway.url}/api/v1/admin/keys", json={"label": "k"}, headers=ADMIN
            ).json()["key"]
            statuses: collections.Counter[int | str] = collections.Counter()
            resets: list[int] = []

            async def load() -> None:
                headers = {**JSON, "Authorization": f"Bearer {key}"}
                limits = httpx.Limits(max_connections=64)
                async with httpx.AsyncClient(
                    base_url=gateway.url, headers=headers, limits=limits, timeout=30
                ) as client:
                    stopping = anyio.Event()

                    async def asking() -> None:
                        while not stopping.is_set():
                            try:
                                answered = await client.post(
                                    "/api/v1/ai/ask_sync", json=ask(project="reset")
                                )
                            except httpx.TransportError as exc:
                                # uvicorn closes a connection whose app raised, 500 or not.
                                statuses[type(exc).__name__] += 1
                            else:
                                statuses[answered.status_code] += 1

                    async with anyio.create_task_group() as tasks:
                        for _ in range(64):
                            tasks.start_soon(asking)
                        for _ in range(8):
                            # Past the second a failure sends every step to local counts.
                            await anyio.sleep(1.2)
                            resets.append(await anyio.to_thread.run_sync(proxy.reset))
                        stopping.set()

            anyio.run(load)
            logs = gateway.logs()

    assert set(statuses) == {200}, statuses
    assert sum(1 for n in resets if n) >= 4, resets  # resets met open connections
    assert "Traceback" not in logs
