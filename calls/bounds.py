"""Bounds on the numbers an upstream reports about an answer: untrusted input like any other.

Token counts and durations come from the model server (or from whatever answers at its
address: a third-party OpenAI-compatible service, a proxy, a buggy build). A count no call
can reach would overflow the store's 64-bit columns and its hourly sums; a negative or
infinite duration would poison every sum it joins. So they are bounded here, where they
enter the gateway's own types (calls.types.Metrics and Embeddings): a count outside
0..MAX_TOKENS, or a duration outside 0..MAX_SECONDS (or not a finite number), becomes
unknown (None), as if the upstream had not sent it, and the log says so. The call is
recorded either way; an output count that became unknown is then estimated from the pieces
relayed (the record says `tokens_estimated`), as for a stream that ended without counts.

`micro` is the precision every duration the gateway measures itself is kept at.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ollama_host.upstream")

# Far past any model's context (the longest are a few million tokens), far below what a
# store's 64-bit sums overflow at: an hour would need four billion such calls.
MAX_TOKENS = 2**31 - 1
# A week: past any --timeout, and past any stream a client could hold open.
MAX_SECONDS = 7 * 86400.0


def tokens_or_none(value: int | None, what: str) -> int | None:
    """A token count as reported, or None if no call could have it."""
    if value is None or 0 <= value <= MAX_TOKENS:
        return value
    log.warning(
        "an upstream reported %s = %d, outside 0..%d: recorded as unknown", what, value, MAX_TOKENS
    )
    return None


def seconds_or_none(value: float | None, what: str) -> float | None:
    """A duration in seconds as reported, or None if no call could take it. (NaN fails
    every comparison, and an infinity is past MAX_SECONDS: one range test covers both.)"""
    if value is None or 0 <= value <= MAX_SECONDS:
        return value
    log.warning(
        "an upstream reported %s = %r s, outside 0..%g s: recorded as unknown",
        what,
        value,
        MAX_SECONDS,
    )
    return None


def micro(seconds: float) -> float:
    """Seconds to the microsecond, as a record keeps its durations (a call's own times and
    its GPU time): round(x, 6) goes through a decimal string, three times the cost, and this
    runs for every call."""
    return int(seconds * 1e6 + 0.5) / 1e6
