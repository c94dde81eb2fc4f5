"""GPU budgets: a key or a project may have GPU-seconds per UTC day and per calendar month.
Spent, a call is refused 429 `gpu_budget_spent` saying when the budget resets (Retry-After);
with --redis every gateway counts against the same budget."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from access import limits
from access.keys import ApiKey, KeyLimits
from access.limits import Limits, MemoryCounters
from access.redis_shared import RedisShared
from calls.errors import OverBudget
from tests import redis_server
from tests.asgi import Local, in_process
from tests.helpers import ask, assert_error, unique
from tests.test_access_limits import Settings
from tests.test_gputime_calls import routed

pytestmark = pytest.mark.anyio
SYNC = "/api/v1/ai/ask_sync"


def key(**own: Any) -> ApiKey:
    return ApiKey(id="k1", label="team", sha256="0" * 64, created="now", limits=KeyLimits(**own))


# -- the budgets on their own ----------------------------------------------------------------


async def test_a_keys_day_budget_refuses_once_spent_until_midnight() -> None:
    gate = Limits(Settings(key_gpu_seconds_per_day=10))
    await gate.admit(key(), None)
    await gate.spend_gpu(key(), None, 9.5)
    await gate.admit(key(), None)  # 9.5 of 10: still in
    await gate.spend_gpu(key(), None, 0.5)

    with pytest.raises(OverBudget) as raised:
        await gate.admit(key(), None)

    error = raised.value
    assert (error.status, error.code) == (429, "gpu_budget_spent")
    assert "the key 'team' has used 10 of its 10 GPU-seconds for today (UTC)" in error.message
    assert limits.next_midnight().isoformat() in error.message
    assert 0 < error.retry_after <= 86400
    assert error.headers["Retry-After"] == str(error.retry_after)


async def test_a_keys_own_budgets_win_and_the_month_is_said_first() -> None:
    gate = Limits(Settings(key_gpu_seconds_per_day=1000))
    own = key(gpu_seconds_per_day=5, gpu_seconds_per_month=5)
    await gate.spend_gpu(own, None, 6)

    with pytest.raises(OverBudget) as raised:
        await gate.admit(own, None)

    # Waiting for midnight would not help: the month's reset is the one to wait for.
    assert "GPU-seconds for this month (UTC)" in raised.value.message
    assert limits.next_month().isoformat() in raised.value.message
    expected = (limits.next_month() - datetime.now(UTC)).total_seconds()
    assert abs(raised.value.retry_after - expected) <= 2


async def test_zero_is_no_budget_and_a_key_may_lift_the_default() -> None:
    gate = Limits(Settings(key_gpu_seconds_per_day=1))
    await gate.spend_gpu(key(gpu_seconds_per_day=0), None, 10**6)

    await gate.admit(key(gpu_seconds_per_day=0), None)


async def test_a_projects_budget_counts_every_key_of_it() -> None:
    gate = Limits(Settings(project_gpu_seconds_per_month=100))
    await gate.spend_gpu(None, "research", 60)
    await gate.spend_gpu(key(), "research", 40)
    await gate.admit(None, "other")

    with pytest.raises(OverBudget, match="the project 'research' has used 100"):
        await gate.admit(None, "research")


async def test_days_and_months_start_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    counters = MemoryCounters()
    day, month = [20000], [24323]
    monkeypatch.setattr(limits, "utc_day", lambda: day[0])
    monkeypatch.setattr(limits, "utc_month", lambda: month[0])
    await counters.gpu_spend("k", 1.25)
    assert await counters.gpu_used("k") == (1.25, 1.25)

    day[0] += 1
    await counters.gpu_spend("k", 0.5)
    assert await counters.gpu_used("k") == (0.5, 1.75)
    day[0] += 1
    month[0] += 1
    assert await counters.gpu_used("k") == (0.0, 0.0)


# -- the admin API ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits_body",
    [
        {"gpu_seconds_per_day": -1},
        {"gpu_seconds_per_month": -0.5},
        {"gpu_seconds_per_day": "7200"},
        {"gpu_seconds_per_day": "two hours"},
        {"gpu_seconds_per_day": 1e12},
        {"gpu_seconds_per_month": 1e300},
        {"gpu_seconds_per_day": True},
    ],
)
async def test_a_budget_that_is_not_one_is_refused_422(
    aclient: httpx.AsyncClient, limits_body: dict[str, Any]
) -> None:
    made = await aclient.post("/api/v1/admin/keys", json={"label": "x", "limits": limits_body})

    error = assert_error(made, 422, "invalid_request")
    assert "gpu_seconds_per_" in error["message"]
    assert (await aclient.get("/api/v1/admin/keys")).json() == []


async def test_a_keys_budgets_are_set_and_changed(aclient: httpx.AsyncClient) -> None:
    body = {"label": "x", "limits": {"gpu_seconds_per_day": 7200}}
    made = await aclient.post("/api/v1/admin/keys", json=body)
    assert made.status_code == 201, made.text
    key_id = made.json()["info"]["id"]

    changed = await aclient.patch(
        f"/api/v1/admin/keys/{key_id}",
        json={"limits": {"gpu_seconds_per_day": 3600.5, "gpu_seconds_per_month": 72000}},
    )
    refused = await aclient.patch(
        f"/api/v1/admin/keys/{key_id}", json={"limits": {"gpu_seconds_per_month": -3}}
    )

    assert made.json()["info"]["limits"] == {"gpu_seconds_per_day": 7200}
    assert changed.json()["limits"] == {
        "gpu_seconds_per_day": 3600.5,
        "gpu_seconds_per_month": 72000,
    }
    assert_error(refused, 422, "invalid_request")


# -- a call over budget ----------------------------------------------------------------------


@pytest.fixture
async def budgeted(tmp_path: Path) -> AsyncIterator[Local]:
    async with in_process(tmp_path / "data", upstream=routed()) as local:
        yield local


async def test_a_key_over_its_budget_is_refused_with_the_reset_time(budgeted: Local) -> None:
    async with budgeted.client() as admin:
        made = await admin.post(
            "/api/v1/admin/keys",
            json={"label": "batch", "limits": {"gpu_seconds_per_day": 0.02}},
        )
    plain = made.json()["key"]
    project = unique()
    body = ask(content="[[load=0.02]]", project=project)
    async with budgeted.client(admin=False, Authorization=f"Bearer {plain}") as client:
        first = await client.post(SYNC, json=body)
        third = await client.post(SYNC, json=body)
        openai = await client.post(
            "/v1/chat/completions",
            json={"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
        )

    # The first call loads for 0.02 s, so it is charged at least that: the budget is spent.
    assert first.status_code == 200
    error = assert_error(third, 429, "gpu_budget_spent")
    assert "the key 'batch' has used" in error["message"]
    assert "GPU-seconds for today (UTC); the budget resets at" in error["message"]
    assert 0 < int(third.headers["Retry-After"]) <= 86400
    # The same refusal in OpenAI's shape on its front.
    assert openai.status_code == 429
    assert "GPU-seconds for today" in openai.json()["error"]["message"]
    assert "Retry-After" in openai.headers


# -- across gateways, with Redis -------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_projects_budget_holds_across_two_gateways(dsn: str, tmp_path: Path) -> None:
    """Two gateways on one database and one Redis: a project that spent its budget through
    one gateway is refused by the other, each way round. (Each call loads for 0.1 s, so it is
    charged at least the whole budget; alone, the other gateway would have counted nothing.)"""
    redis_server.require()
    flags = ("--store", dsn, "--redis", redis_server.URL, "--project-gpu-seconds-per-day", "0.1")
    first, second = ("p-" + secrets.token_hex(6) for _ in range(2))
    async with (
        in_process(tmp_path / "a", *flags, upstream=routed()) as a,
        in_process(tmp_path / "b", *flags, upstream=routed()) as b,
        a.client() as on_a,
        b.client() as on_b,
    ):

        async def asks(client: httpx.AsyncClient, project: str) -> httpx.Response:
            return await client.post(SYNC, json=ask(content="[[load=0.1]]", project=project))

        spent_on_a = await asks(on_a, first)
        refused_by_b = await asks(on_b, first)
        spent_on_b = await asks(on_b, second)
        refused_by_a = await asks(on_a, second)
        health = (await on_b.get("/health")).json()

    assert (spent_on_a.status_code, spent_on_b.status_code) == (200, 200)
    error = assert_error(refused_by_b, 429, "gpu_budget_spent")
    assert f"the project {first!r} has used" in error["message"]
    assert "its 0.1 GPU-seconds for today" in error["message"]
    assert_error(refused_by_a, 429, "gpu_budget_spent")
    assert health["limits"]["status"] == "ok"


@pytest.mark.redis
async def test_gpu_seconds_add_up_in_redis() -> None:
    redis_server.require()
    scope = "test-" + secrets.token_hex(6)
    a, b = RedisShared(redis_server.URL, scope), RedisShared(redis_server.URL, scope)
    try:
        await a.gpu_spend("key:k", 1.5)
        await b.gpu_spend("key:k", 0.25)

        assert await a.gpu_used("key:k") == await b.gpu_used("key:k") == (1.75, 1.75)
        assert a.health().status == "ok"
    finally:
        await a.aclose()
        await b.aclose()
