"""Limits on asking: requests per minute, tokens per day, concurrent streams.

All counters live in memory, in the event loop's thread: they restart with the
gateway. Every refusal says how long to wait (Retry-After).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from errors import ApiError


def too_many(message: str, retry_after: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after))
    return ApiError(429, "rate_limited", message, headers={"Retry-After": str(seconds)})


class PerMinute:
    """A token bucket per name: `rate` requests a minute, in bursts of up to `rate`."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str, rate: int, what: str) -> None:
        if rate <= 0:
            return
        now = time.monotonic()
        level, last = self._buckets.get(name, (float(rate), now))
        level = min(float(rate), level + (now - last) * rate / 60.0)
        if level < 1.0:
            self._buckets[name] = (level, now)
            raise too_many(f"{what} may make {rate} requests a minute", (1.0 - level) * 60.0 / rate)
        self._buckets[name] = (level - 1.0, now)


class PerDay:
    """Tokens spent per name in the current UTC day."""

    def __init__(self) -> None:
        self._day = -1
        self._spent: dict[str, int] = defaultdict(int)

    def _today(self) -> None:
        # The UTC day's number: time.time() counts no leap seconds, so days are 86,400 s.
        # (A datetime and an isoformat() per call showed in the profile of an ask.)
        day = int(time.time() // 86400)
        if day != self._day:
            self._day, self._spent = day, defaultdict(int)

    def check(self, name: str, limit: int, what: str) -> None:
        self._today()
        if limit > 0 and self._spent[name] >= limit:
            now = datetime.now(UTC)
            midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
            raise too_many(
                f"{what} has used its {limit} tokens for today (UTC)",
                (midnight - now).total_seconds(),
            )

    def spend(self, name: str, tokens: int) -> None:
        self._today()
        self._spent[name] += tokens


class Concurrent:
    """Streams open right now, per name."""

    def __init__(self) -> None:
        self._open: dict[str, int] = defaultdict(int)

    def enter(self, name: str, limit: int, what: str) -> None:
        if limit > 0 and self._open[name] >= limit:
            raise too_many(f"{what} may have {limit} streams open at once", 1)
        self._open[name] += 1

    def leave(self, name: str) -> None:
        self._open[name] -= 1
        if self._open[name] <= 0:
            del self._open[name]
