"""access/tickets.py: stream tickets in this process's memory; short-lived, single-use, and
bounded in number."""

from __future__ import annotations

import time

import pytest

from access import tickets
from access.tickets import TICKET_SECONDS, MemoryTickets

pytestmark = pytest.mark.anyio


class Clock:
    """The `time` module as access.tickets sees it, with a monotonic clock moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(tickets, "time", self)

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


async def test_a_ticket_works_once() -> None:
    kept = MemoryTickets()
    ticket = await kept.issue("holder")

    assert await kept.redeem(ticket) == "holder"
    assert await kept.redeem(ticket) is None
    assert await kept.redeem("never-issued") is None


async def test_a_ticket_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = MemoryTickets()
    clock = Clock(monkeypatch)
    ticket = await kept.issue("holder")
    other = await kept.issue("holder")

    clock.now += TICKET_SECONDS + 1

    assert await kept.redeem(ticket) is None
    clock.now -= 2
    assert await kept.redeem(other) == "holder"


def test_expired_tickets_are_dropped_when_new_ones_are_issued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = MemoryTickets()
    clock = Clock(monkeypatch)
    for _ in range(100):
        kept.issue_now("holder")

    clock.now += TICKET_SECONDS + 1
    kept.issue_now("holder")

    assert len(kept._tickets) == 1


def test_past_the_cap_the_oldest_tickets_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tickets, "MAX_TICKETS", 3)
    kept = MemoryTickets()
    issued = [kept.issue_now(f"h{n}") for n in range(5)]

    assert [kept.redeem_now(t) for t in issued] == [None, None, "h2", "h3", "h4"]


def test_tickets_are_unguessable_and_distinct() -> None:
    kept = MemoryTickets()
    issued = {kept.issue_now("holder") for _ in range(50)}

    assert len(issued) == 50
    assert all(len(t) >= 32 and "holder" not in t for t in issued)
