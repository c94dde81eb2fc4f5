"""GPU time: how much of an upstream's GPUs a call used, by a rule that never counts more
GPU-seconds than the upstream has.

The rule. An upstream has `gpus` GPUs (the `gpus=N` option, default 1). While `n` calls run
on it at once, each is charged `min(1, gpus / n)` GPU-seconds per second: alone (or with fewer
calls than GPUs) a call has a whole GPU; beside others, the busy seconds are divided evenly
among the calls running in them. A call's *share* is that rate integrated over the time it
held its slot, and the shares of every call on an upstream add up, over any interval, to at
most the interval times its GPUs, since `n * min(1, gpus / n) = min(n, gpus)`.

`GpuClock` keeps that integral as a virtual clock (the fluid share model of processor
sharing): it advances at `min(1, gpus / n)` per second of real time, and a call's share is
the difference between its readings at the end and at the start. Each start and stop is
O(1).

What a call is charged, `gpu_seconds`:

- when the upstream reports its own time for the call (Ollama: load + prompt evaluation +
  generation; llama-server: `timings.prompt_ms + predicted_ms`), that time, at most the time
  the call held its slot, scaled by the fraction of a GPU the call had on average while it
  held it (`share / held`). Alone on the upstream, that fraction is 1 and the charge is the
  upstream's own figure;
- when it reports nothing (vLLM, LM Studio, an embedding from an OpenAI-compatible server, a
  call cancelled or failed before the final account), the share itself: the time the call
  held a slot, divided as above.

Either way the charge is at most the share, so the invariant holds for what records carry.
The clock counts the calls this gateway process runs on the upstream: gateways or workers
that share one upstream each count only their own (docs/upstreams.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from calls.bounds import micro
from calls.types import GpuUse, Metrics

_HOUR = 3600.0


class Lease:
    """One call's start on a clock: when, and the virtual time then."""

    __slots__ = ("at", "virtual")

    def __init__(self, at: float, virtual: float) -> None:
        self.at = at
        self.virtual = virtual


class GpuClock:
    """One upstream's GPUs, shared by the calls running on it (see the module's docstring)."""

    __slots__ = ("_at", "_now", "gpus", "running", "virtual")

    def __init__(self, gpus: int = 1, now: Callable[[], float] = time.monotonic) -> None:
        if gpus < 1:
            raise ValueError("an upstream has at least one GPU")
        self.gpus = gpus
        self.running = 0
        self.virtual = 0.0
        self._now = now
        self._at = now()

    def _advance(self) -> float:
        now = self._now()
        running = self.running
        if running:
            rate = 1.0 if running <= self.gpus else self.gpus / running
            self.virtual += (now - self._at) * rate
        self._at = now
        return now

    def start(self) -> Lease:
        """A call starts running on the upstream."""
        now = self._advance()
        self.running += 1
        return Lease(now, self.virtual)

    def stop(self, lease: Lease) -> tuple[float, float]:
        """The call has ended: how long it held its slot, and its share of the GPUs then."""
        now = self._advance()
        self.running -= 1
        return max(0.0, now - lease.at), max(0.0, self.virtual - lease.virtual)


_INF = float("inf")


def reported(metrics: Metrics | None) -> float | None:
    """The upstream's own time for a call: load + prompt evaluation + generation, as far as
    it reports them; else its total (an Ollama embedding reports only that); else None.

    An upstream's figures are untrusted: one that is not a finite non-negative number is
    ignored (NaN fails every comparison), and any is bounded later by the time the slot was
    held. (Plain code, not a comprehension: this runs on every call.)"""
    if metrics is None:
        return None
    total = 0.0
    found = False
    for value in (metrics.load_seconds, metrics.prompt_eval_seconds, metrics.eval_seconds):
        if value is not None and 0.0 <= value < _INF:
            total += value
            found = True
    if found:
        return total
    value = metrics.upstream_seconds
    return value if value is not None and 0.0 <= value < _INF else None


def charge(own: float | None, held: float, share: float, cost: float | None) -> GpuUse:
    """What a call used: the upstream's own time `own` (None: unknown), bounded by the time
    it `held` its slot and scaled to its `share`; its cost at `cost` per GPU-hour."""
    if own is None or held <= 0.0:
        seconds = share
    else:
        seconds = (own if own < held else held) * (share / held)
    # To the microsecond (and the cost to 1e-9), by arithmetic: round() formats the float
    # as decimal digits and parses them back, a few thousand instructions on every call.
    seconds = micro(seconds)
    return GpuUse(
        seconds=seconds,
        cost=None if cost is None else int(seconds * cost / _HOUR * 1e9 + 0.5) / 1e9,
    )
