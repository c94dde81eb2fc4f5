"""Stream tickets: short-lived, single-use, for a browser's EventSource, which cannot send
headers. A ticket names its holder (a key id, ADMIN, or ANYONE while no key exists).

`Tickets` is the seam: `MemoryTickets` keeps them in this process, for one gateway; a
shared implementation (access.redis_shared) lets a ticket issued by one gateway be redeemed
at another, behind one address.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Protocol

TICKET_SECONDS = 60.0
# Tickets issued and not yet redeemed or expired, at most: past it the oldest go first.
MAX_TICKETS = 100_000


class Tickets(Protocol):
    async def issue(self, holder: str) -> str:
        """A new ticket for `holder`, valid for TICKET_SECONDS, once."""
        ...

    async def redeem(self, ticket: str) -> str | None:
        """The holder of a live ticket, or None. A ticket works once."""
        ...


class MemoryTickets:
    """Tickets in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: dict[str, tuple[float, str]] = {}

    def issue_now(self, holder: str) -> str:
        ticket = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            self._tickets = {t: v for t, v in self._tickets.items() if v[0] > now}
            while len(self._tickets) >= MAX_TICKETS:
                del self._tickets[next(iter(self._tickets))]
            self._tickets[ticket] = (now + TICKET_SECONDS, holder)
        return ticket

    def redeem_now(self, ticket: str) -> str | None:
        with self._lock:
            found = self._tickets.pop(ticket, None)
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    async def issue(self, holder: str) -> str:
        return self.issue_now(holder)

    async def redeem(self, ticket: str) -> str | None:
        return self.redeem_now(ticket)
