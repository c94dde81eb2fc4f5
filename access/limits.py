"""Limits on asking: requests per minute, tokens per day, GPU-seconds per day and per month,
concurrent streams.

`Limits` applies the gateway's settings and each key's own limits to a call; the counting
itself is done by a `Counters` implementation. `MemoryCounters`, the default, counts in the
event loop's thread and restarts with the gateway; a shared implementation (a Redis, say) is
another class with the same four methods. Every refusal is a `RateLimited` that says how long
to wait.

A shared implementation that cannot reach its store answers from this process's own counts
instead, and says so by calling `counted_alone()` during the step. `Limits` then counts that
admission as decided locally: /health shows how many and when the last was, the request's
log line says `limits=local`, and a warning says so at most once a minute.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from contextvars import ContextVar, Token
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import msgspec

from calls.errors import OverBudget, RateLimited

from .keys import ApiKey

log = logging.getLogger("ollama_host.limits")

# How often, at most, the log says that admissions are being decided locally.
ALONE_LOG_SECONDS = 60.0


class CountersHealth(msgspec.Struct, kw_only=True):
    """Where the limits are counted, and whether that works."""

    status: Literal["ok", "degraded"] = "ok"
    # The shared counter store's address (never a password), or None: this process alone.
    shared: str | None = None
    error: str | None = None
    # With a shared store: calls (and streams) this gateway admitted or refused by its own
    # counts since it started, because the shared store failed, and when the last was.
    local_admissions: int = 0
    last_local_admission: str | None = None


# True once a step of the admission running in this task was counted by this process alone.
_alone: ContextVar[bool] = ContextVar("counted_alone", default=False)


def counted_alone() -> None:
    """Say that the current step was answered from this process's own counts because the
    shared store failed (a shared Counters calls this; Limits reports it)."""
    _alone.set(True)


class Counters(Protocol):
    """Named counters. Each method is one atomic step, even when several gateways share them."""

    def health(self) -> CountersHealth: ...

    async def take(self, name: str, rate: int) -> float:
        """Take one request from `name`'s per-minute bucket of `rate`: 0 if admitted, else
        the seconds until one would be."""
        ...

    async def spent_today(self, name: str) -> int:
        """Tokens `name` has spent in the current UTC day."""
        ...

    async def spend(self, name: str, tokens: int) -> None: ...

    async def enter(self, name: str, limit: int) -> bool:
        """Count one more open stream for `name`, unless `limit` are open already."""
        ...

    async def leave(self, name: str) -> None: ...

    async def gpu_used(self, name: str) -> tuple[float, float]:
        """GPU-seconds `name` has used in the current UTC day and calendar month."""
        ...

    async def gpu_spend(self, name: str, seconds: float) -> None: ...


def utc_day() -> int:
    # time.time() counts no leap seconds, so UTC days are 86,400 s long. (A datetime and an
    # isoformat() per call showed in the profile of an ask.)
    return int(time.time() // 86400)


def seconds_to_midnight() -> float:
    return (next_midnight() - datetime.now(UTC)).total_seconds()


def utc_month() -> int:
    """The current UTC calendar month, as a number that grows by one a month."""
    now = time.gmtime()
    return now.tm_year * 12 + now.tm_mon - 1


def next_month() -> datetime:
    """When the current UTC calendar month ends."""
    now = datetime.now(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def next_midnight() -> datetime:
    """When the current UTC day ends."""
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    return datetime.combine(tomorrow, datetime.min.time(), UTC)


# GPU-seconds are counted in whole microseconds: exact sums, in Redis too (INCRBY).
MICROS = 1_000_000


class MemoryCounters:
    """Counters in this process's memory: a token bucket per name, tokens per UTC day, and
    streams open now."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._day = -1
        self._spent: dict[str, int] = defaultdict(int)
        self._open: dict[str, int] = defaultdict(int)
        # GPU microseconds by name, for the current day and month.
        self._gpu_day = self._gpu_month = -1
        self._gpu_today: dict[str, int] = defaultdict(int)
        self._gpu_this_month: dict[str, int] = defaultdict(int)

    def health(self) -> CountersHealth:
        return CountersHealth()

    async def take(self, name: str, rate: int) -> float:
        now = time.monotonic()
        level, last = self._buckets.get(name, (float(rate), now))
        level = min(float(rate), level + (now - last) * rate / 60.0)
        if level < 1.0:
            self._buckets[name] = (level, now)
            return (1.0 - level) * 60.0 / rate
        self._buckets[name] = (level - 1.0, now)
        return 0.0

    def _today(self) -> dict[str, int]:
        day = utc_day()
        if day != self._day:
            self._day, self._spent = day, defaultdict(int)
        return self._spent

    async def spent_today(self, name: str) -> int:
        return self._today()[name]

    async def spend(self, name: str, tokens: int) -> None:
        self._today()[name] += tokens

    async def enter(self, name: str, limit: int) -> bool:
        if limit > 0 and self._open[name] >= limit:
            return False
        self._open[name] += 1
        return True

    async def leave(self, name: str) -> None:
        self._open[name] -= 1
        if self._open[name] <= 0:
            del self._open[name]

    def _gpu(self) -> tuple[dict[str, int], dict[str, int]]:
        day = utc_day()
        if day != self._gpu_day:
            # A month only turns with a day: the calendar is read once a day.
            self._gpu_day, self._gpu_today = day, defaultdict(int)
            month = utc_month()
            if month != self._gpu_month:
                self._gpu_month, self._gpu_this_month = month, defaultdict(int)
        return self._gpu_today, self._gpu_this_month

    async def gpu_used(self, name: str) -> tuple[float, float]:
        today, month = self._gpu()
        return today[name] / MICROS, month[name] / MICROS

    async def gpu_spend(self, name: str, seconds: float) -> None:
        today, month = self._gpu()
        micros = round(seconds * MICROS)
        today[name] += micros
        month[name] += micros


class LimitSettings(Protocol):
    """The settings Limits reads (ollama_host.settings.Settings has them)."""

    @property
    def key_rpm(self) -> int: ...
    @property
    def key_tokens_per_day(self) -> int: ...
    @property
    def key_streams(self) -> int: ...
    @property
    def project_rpm(self) -> int: ...
    @property
    def project_tokens_per_day(self) -> int: ...
    @property
    def max_streams(self) -> int: ...
    @property
    def key_gpu_seconds_per_day(self) -> float: ...
    @property
    def key_gpu_seconds_per_month(self) -> float: ...
    @property
    def project_gpu_seconds_per_day(self) -> float: ...
    @property
    def project_gpu_seconds_per_month(self) -> float: ...


class Limits:
    """The gateway's limits, applied to one caller and project at a time."""

    def __init__(self, settings: LimitSettings, counters: Counters | None = None) -> None:
        self.settings = settings
        self.counters: Counters = counters or MemoryCounters()
        # Checked once: with no limit set anywhere, admitting a call costs one test.
        self._project_limits = bool(settings.project_rpm or settings.project_tokens_per_day)
        self._project_gpu = (
            settings.project_gpu_seconds_per_day,
            settings.project_gpu_seconds_per_month,
        )
        self._project_gpu_on = any(self._project_gpu)
        # Counted by this process alone by design: no admission is then "decided locally".
        self._shared = self.counters.health().shared is not None
        self._alone = 0
        self._alone_at: datetime | None = None
        self._alone_logged = 0  # how many the last warning covered
        self._alone_log_at = -ALONE_LOG_SECONDS
        # Called in the request's own task when its admission was decided locally (the
        # request log marks its line).
        self.observers: list[Callable[[], None]] = []

    def health(self) -> CountersHealth:
        found = self.counters.health()
        if not self._alone:
            return found
        at = self._alone_at.isoformat() if self._alone_at else None
        return msgspec.structs.replace(found, local_admissions=self._alone, last_local_admission=at)

    def _decided_alone(self) -> None:
        self._alone += 1
        self._alone_at = datetime.now(UTC)
        for observer in self.observers:
            observer()
        now = time.monotonic()
        if now - self._alone_log_at >= ALONE_LOG_SECONDS:
            log.warning(
                "%d admission(s) decided by this gateway's own counts, not the shared ones, "
                "since the last such line (%d since start): %s",
                self._alone - self._alone_logged,
                self._alone,
                self.counters.health().error or "the shared counter store failed",
            )
            self._alone_log_at, self._alone_logged = now, self._alone

    async def admit(self, key: ApiKey | None, project: str | None) -> None:
        """Take one request from the caller's and the project's budgets (RateLimited if spent)."""
        # Watched only with a shared store (a lone gateway's counts are its own by design).
        token = _alone.set(False) if self._shared else None
        try:
            if key is not None:
                limits = key.limits
                s = self.settings
                rpm = s.key_rpm if limits.rpm is None else limits.rpm
                per_day = (
                    s.key_tokens_per_day if limits.tokens_per_day is None else limits.tokens_per_day
                )
                what = f"the key {key.label!r}"
                await self._day(f"key:{key.id}", per_day, what)
                gpu_day = (
                    s.key_gpu_seconds_per_day
                    if limits.gpu_seconds_per_day is None
                    else limits.gpu_seconds_per_day
                )
                gpu_month = (
                    s.key_gpu_seconds_per_month
                    if limits.gpu_seconds_per_month is None
                    else limits.gpu_seconds_per_month
                )
                if gpu_day or gpu_month:
                    await self._gpu(f"key:{key.id}", gpu_day, gpu_month, what)
                await self._minute(f"key:{key.id}", rpm, what)
            if project is not None and (self._project_limits or self._project_gpu_on):
                name, what = f"project:{project}", f"the project {project!r}"
                if self._project_gpu_on:
                    await self._gpu(name, *self._project_gpu, what)
                if self._project_limits:
                    await self._day(name, self.settings.project_tokens_per_day, what)
                    await self._minute(name, self.settings.project_rpm, what)
        finally:
            if token is not None:
                self._watched(token)

    def _watched(self, token: Token[bool]) -> None:
        alone = _alone.get()
        _alone.reset(token)
        if alone:
            self._decided_alone()

    async def _minute(self, name: str, rate: int, what: str) -> None:
        if rate > 0 and (wait := await self.counters.take(name, rate)) > 0:
            raise RateLimited(f"{what} may make {rate} requests a minute", wait)

    async def _day(self, name: str, limit: int, what: str) -> None:
        if limit > 0 and await self.counters.spent_today(name) >= limit:
            raise RateLimited(
                f"{what} has used its {limit} tokens for today (UTC)", seconds_to_midnight()
            )

    async def _gpu(self, name: str, per_day: float, per_month: float, what: str) -> None:
        """Refuse if `name` has spent its GPU budget: the month's first, since then waiting
        for midnight would not help."""
        today, month = await self.counters.gpu_used(name)
        if per_month and month >= per_month:
            reset = next_month()
            raise OverBudget(
                f"{what} has used {month:,.0f} of its {per_month:,g} GPU-seconds for this "
                f"month (UTC); the budget resets at {reset.isoformat()}",
                (reset - datetime.now(UTC)).total_seconds(),
            )
        if per_day and today >= per_day:
            reset = next_midnight()
            raise OverBudget(
                f"{what} has used {today:,.0f} of its {per_day:,g} GPU-seconds for today "
                f"(UTC); the budget resets at {reset.isoformat()}",
                (reset - datetime.now(UTC)).total_seconds(),
            )

    def counts_gpu(self, key: ApiKey | None, project: str | None) -> bool:
        """Whether spend_gpu would count anything for this key and project (every call asks:
        a test here costs less than a coroutine that does nothing)."""
        return key is not None or (project is not None and self._project_gpu_on)

    async def spend_gpu(self, key: ApiKey | None, project: str | None, seconds: float) -> None:
        """Count a finished call's GPU-seconds against its key's and project's budgets.

        A key's are always counted, since its budget may be set later in the day; a project's
        only when the settings give projects a budget, which cannot change while running."""
        if key is not None:
            await self.counters.gpu_spend(f"key:{key.id}", seconds)
        if project is not None and self._project_gpu_on:
            await self.counters.gpu_spend(f"project:{project}", seconds)

    async def spend(self, key: ApiKey | None, project: str | None, tokens: int) -> None:
        """Count a finished call's tokens against its key's and project's daily budgets."""
        if key is not None:
            await self.counters.spend(f"key:{key.id}", tokens)
        if project is not None:
            await self.counters.spend(f"project:{project}", tokens)

    async def open_stream(self, key: ApiKey | None) -> tuple[str, ...]:
        """Hold a place for one more open stream (RateLimited past the limits); returns the
        places held, to be given back once with `close_stream`."""
        token = _alone.set(False) if self._shared else None
        try:
            counters = self.counters
            limit = self.settings.max_streams
            if not await counters.enter("all", limit):
                raise RateLimited(f"the gateway may have {limit} streams open at once", 1)
            if key is None:
                return ("all",)
            s = self.settings
            limit = s.key_streams if key.limits.streams is None else key.limits.streams
            if not await counters.enter(f"key:{key.id}", limit):
                await counters.leave("all")
                raise RateLimited(f"the key {key.label!r} may have {limit} streams open at once", 1)
            return ("all", f"key:{key.id}")
        finally:
            if token is not None:
                self._watched(token)

    async def close_stream(self, held: tuple[str, ...]) -> None:
        for name in held:
            await self.counters.leave(name)
