"""A circuit breaker: when an upstream keeps failing, stop sending it calls for a while.

- closed: calls go there. A server that cannot be connected to at all, whose health
  check's connection fails, or whose health check times out (hung), opens it at once (it is
  down); a server error, an unreadable answer, a call's broken connection or a call that
  timed out open it after `THRESHOLD` in a row.
- open: no calls. After the cooldown the router's health check probes it (half-open).
- half-open: the probe answered. Opened because it could not be reached, that is enough:
  closed.
  Opened by bad answers, the health check proves little (a server can list its models and
  still answer garbage), so one call at a time may go there as a trial: a success closes
  it, a failure opens it again for twice as long, up to `MAX_COOLDOWN`. So an upstream that
  answers garbage costs a few calls per cooldown, not one per call forever.
"""

from __future__ import annotations

from typing import Literal

THRESHOLD = 3
MAX_COOLDOWN = 300.0

State = Literal["closed", "open", "half-open"]


class Breaker:
    def __init__(self, cooldown: float, retry: float) -> None:
        # The first wait after opening for bad answers; each reopening without a success
        # doubles it. An unreachable server is probed every `retry` seconds instead: trying
        # to connect costs nothing, and calls wait for it.
        self.cooldown = cooldown
        self.retry = retry
        self.state: State = "closed"
        self.failures = 0  # in a row
        self.opened = 0  # times opened since the last success
        self.hard = False  # opened by a connection failure
        self.until = 0.0

    @property
    def routable(self) -> bool:
        return self.state != "open"

    def due(self, now: float) -> bool:
        """Whether an open circuit's cooldown has passed: time for a probe."""
        return self.state == "open" and now >= self.until

    def success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self.opened = 0
        self.hard = False

    def failure(self, now: float, *, hard: bool) -> None:
        self.failures += 1
        if self.state == "half-open" or hard or self.failures >= THRESHOLD:
            self._open(now, hard=hard)

    def probed(self, now: float, *, ok: bool, hard: bool = False) -> None:
        """The health check's answer for an open (or half-open) circuit; `hard`: it could not
        even connect."""
        if not ok:
            self._open(now, hard=hard or self.hard)
        elif self.hard:
            self.success()
        else:
            self.state = "half-open"

    def _open(self, now: float, *, hard: bool) -> None:
        self.state = "open"
        self.hard = hard
        self.opened += 1
        wait = self.retry if hard else self.cooldown * 2 ** (self.opened - 1)
        self.until = now + min(wait, MAX_COOLDOWN)
