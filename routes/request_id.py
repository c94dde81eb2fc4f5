"""Each request's id, made as it comes in (`new_id`), and what is known of the request while it
runs (`current`). A call takes its request's id: the response's `X-Request-Id`, the log line
and the usage record all carry the same one. The request log (ollama_host/requestlog.py)
sets `current` for every request; fronts read it here.
"""

from __future__ import annotations

import os
import random
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calls.record import Account
    from store.records import UsageRecord

_id_lock = threading.Lock()
_random = random.Random(os.urandom(16))  # noqa: S311 (ids are not secrets)
_last_id_us = 0


def new_id() -> str:
    """A request (and record) id that sorts by creation time: 14 hex digits of µs, 6 random.

    Monotonic within the process even if the clock steps back, so newest-first
    paging by id never skips a record.
    """
    global _last_id_us
    with _id_lock:
        now = max(time.time_ns() // 1000, _last_id_us + 1)
        _last_id_us = now
        # Not os.urandom: an id need not be secret, and a syscall per request showed.
        tail = _random.getrandbits(24)
    return f"{now:014x}{tail:06x}"


class RequestInfo:
    """What the log line needs to know about one request, filled in as it runs."""

    __slots__ = ("account", "id", "limits_local", "record", "started")

    def __init__(self, request_id: str, started: float = 0.0) -> None:
        self.id = request_id
        # When its first byte arrived (time.perf_counter), and the account of its call, if
        # it makes one: what the response's Server-Timing is made of.
        self.started = started
        self.account: Account | None = None
        # The usage record of the ask this request made, once written.
        self.record: UsageRecord | None = None
        # Its admission was decided by this gateway's own counts, the shared store failing.
        self.limits_local = False


# Set for the duration of each HTTP request; tasks the request starts inherit it.
current: ContextVar[RequestInfo | None] = ContextVar("current_request", default=None)


def note_record(record: UsageRecord) -> None:
    """A pipeline observer: the current request's call was recorded, for its log line."""
    info = current.get()
    if info is not None and info.id == record.id:
        info.record = record


def note_account(account: Account) -> None:
    """A pipeline starter: the current request's call was admitted. Its clock starts when
    the request arrived, and the response's Server-Timing splits the call's time."""
    info = current.get()
    if info is not None and info.id == account.id:
        info.account = account
        account.timing.received = info.started


def note_local_admission() -> None:
    """A Limits observer: the current request was admitted (or refused) by this gateway's own
    counts, the shared ones having failed; its log line says `limits=local`."""
    info = current.get()
    if info is not None:
        info.limits_local = True
