"""access/limits.py: requests a minute, tokens a day, streams at once; the counters and the
limits on their own, and the refusals as a client sees them, in process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from access import limits
from access.keys import ApiKey, KeyLimits
from access.limits import Limits, MemoryCounters, seconds_to_midnight
from calls.errors import RateLimited
from tests.asgi import Keyed, Local
from tests.helpers import aonly_record, ask, assert_error, unique

pytestmark = pytest.mark.anyio

SYNC = "/api/v1/ai/ask_sync"


@dataclass
class Settings:
    """The settings Limits reads; 0 means no limit, as on the command line."""

    key_rpm: int = 0
    key_tokens_per_day: int = 0
    key_streams: int = 0
    project_rpm: int = 0
    project_tokens_per_day: int = 0
    max_streams: int = 0
    key_gpu_seconds_per_day: float = 0
    key_gpu_seconds_per_month: float = 0
    project_gpu_seconds_per_day: float = 0
    project_gpu_seconds_per_month: float = 0


def key(**own: int | None) -> ApiKey:
    return ApiKey(id="k1", label="team", sha256="0" * 64, created="now", limits=KeyLimits(**own))


class Clock:
    """The `time` module as access.limits sees it, with a monotonic clock and the UTC day
    moved by hand (the event loop keeps the real clock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        self.day = 20000
        monkeypatch.setattr(limits, "time", self)
        monkeypatch.setattr(limits, "utc_day", lambda: self.day)

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


# -- the counters ----------------------------------------------------------------------


async def test_a_bucket_admits_its_rate_then_says_how_long_to_wait(clock: Clock) -> None:
    counters = MemoryCounters()

    taken = [await counters.take("a", 2) for _ in range(3)]

    assert taken[:2] == [0.0, 0.0]
    assert taken[2] == pytest.approx(30.0)
    assert await counters.take("b", 2) == 0.0


async def test_a_bucket_refills_with_time(clock: Clock) -> None:
    counters = MemoryCounters()
    for _ in range(2):
        await counters.take("a", 2)

    clock.now += 15
    half = await counters.take("a", 2)
    clock.now += 30

    assert half == pytest.approx(15.0)
    assert await counters.take("a", 2) == 0.0


async def test_tokens_spent_count_for_the_current_utc_day_only(clock: Clock) -> None:
    counters = MemoryCounters()
    await counters.spend("a", 30)
    await counters.spend("a", 12)
    today = await counters.spent_today("a")

    clock.day += 1

    assert today == 42
    assert await counters.spent_today("a") == 0


async def test_streams_are_counted_in_and_out(clock: Clock) -> None:
    counters = MemoryCounters()

    entered = [await counters.enter("a", 2) for _ in range(3)]
    await counters.leave("a")

    assert entered == [True, True, False]
    assert await counters.enter("a", 2)
    assert all([await counters.enter("b", 0) for _ in range(50)])


# -- the limits ------------------------------------------------------------------------


async def test_nothing_is_limited_by_default(clock: Clock) -> None:
    gate = Limits(Settings())

    for _ in range(100):
        await gate.admit(key(), "p")
    await gate.spend(key(), "p", 10**9)
    held = [await gate.open_stream(key()) for _ in range(100)]

    await gate.admit(key(), "p")
    assert held[0] == ("all", "key:k1")


async def test_a_keys_own_rate_wins_over_the_default(clock: Clock) -> None:
    gate = Limits(Settings(key_rpm=100))

    await gate.admit(key(rpm=1), None)
    with pytest.raises(RateLimited) as raised:
        await gate.admit(key(rpm=1), None)

    assert raised.value.message == "the key 'team' may make 1 requests a minute"
    assert raised.value.headers == {"Retry-After": "60"}


async def test_a_key_limit_of_0_lifts_the_default(clock: Clock) -> None:
    gate = Limits(Settings(key_rpm=1))

    for _ in range(5):
        await gate.admit(key(rpm=0), None)
    await gate.admit(key(), None)
    with pytest.raises(RateLimited):
        await gate.admit(key(), None)


async def test_tokens_a_day_refuse_until_midnight(clock: Clock) -> None:
    gate = Limits(Settings(key_tokens_per_day=50, project_tokens_per_day=100))
    await gate.admit(key(), "p")
    await gate.spend(key(), "p", 50)

    with pytest.raises(RateLimited) as by_key:
        await gate.admit(key(), "other")
    await gate.admit(None, "p")
    await gate.spend(None, "p", 50)
    with pytest.raises(RateLimited) as by_project:
        await gate.admit(None, "p")
    clock.day += 1
    await gate.admit(key(), "p")

    assert by_key.value.message == "the key 'team' has used its 50 tokens for today (UTC)"
    assert by_project.value.message == "the project 'p' has used its 100 tokens for today (UTC)"
    assert 1 <= by_key.value.retry_after <= 86400


async def test_project_rates_count_per_project(clock: Clock) -> None:
    gate = Limits(Settings(project_rpm=1))

    await gate.admit(None, "a")
    await gate.admit(None, "b")
    await gate.admit(None, None)
    with pytest.raises(RateLimited) as raised:
        await gate.admit(None, "a")

    assert raised.value.message == "the project 'a' may make 1 requests a minute"


async def test_streams_are_limited_in_all_and_per_key(clock: Clock) -> None:
    gate = Limits(Settings(max_streams=3, key_streams=1))

    mine = await gate.open_stream(key())
    with pytest.raises(RateLimited) as per_key:
        await gate.open_stream(key())
    anyones = [await gate.open_stream(None), await gate.open_stream(None)]
    with pytest.raises(RateLimited) as in_all:
        await gate.open_stream(None)
    await gate.close_stream(mine)
    await gate.close_stream(anyones[0])

    assert per_key.value.message == "the key 'team' may have 1 streams open at once"
    assert in_all.value.message == "the gateway may have 3 streams open at once"
    assert per_key.value.headers == {"Retry-After": "1"}
    assert await gate.open_stream(key()) == ("all", "key:k1")


async def test_a_stream_refused_for_its_key_gives_its_place_in_all_back(clock: Clock) -> None:
    gate = Limits(Settings(max_streams=2, key_streams=1))
    await gate.open_stream(key())

    for _ in range(5):
        with pytest.raises(RateLimited):
            await gate.open_stream(key())

    assert await gate.open_stream(None) == ("all",)


def test_midnight_is_at_most_a_day_away() -> None:
    assert 0 < seconds_to_midnight() <= 86400


# -- as a client sees them ------------------------------------------------------------


async def test_key_requests_per_minute(keyed: Keyed) -> None:
    async with keyed.client("slow") as client:
        first = await client.post(SYNC, json=ask())
        second = await client.post(SYNC, json=ask())

    assert first.status_code == 200
    assert_error(second, 429, "rate_limited")
    assert 1 <= int(second.headers["retry-after"]) <= 60


async def test_project_requests_per_minute(guarded: Local) -> None:
    project, other = unique(), unique()
    async with guarded.client() as client:
        statuses = [
            (await client.post(SYNC, json=ask(project=project))).status_code for _ in range(3)
        ]
        elsewhere = await client.post(SYNC, json=ask(project=other))

    assert statuses == [200, 200, 429]
    assert elsewhere.status_code == 200


async def test_project_tokens_per_day(guarded: Local) -> None:
    project = unique()
    async with guarded.client() as client:
        first = await client.post(SYNC, json=ask(content="[[tokens=45]]", project=project))
        await aonly_record(client, project)
        second = await client.post(SYNC, json=ask(project=project))

    assert first.status_code == 200
    assert_error(second, 429, "rate_limited")
    assert 1 <= int(second.headers["retry-after"]) <= 86400
