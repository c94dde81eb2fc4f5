"""What both stores share in writing: the bounded queue of records appended and not yet
stored, the count of those dropped past its bound, the callers waiting for a flush, and the
one thread that stores them. Each store's thread runs its own loop over the queue (a journal
and TinyDB files; a COPY to PostgreSQL), under the queue's lock, which the store's other state
may share so that a reader sees a record in exactly one place at one instant.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from .records import UsageRecord

log = logging.getLogger("ollama_host.store")

# Records held in memory while the disk or the database refuses them; past this, the newest
# are dropped (and counted), so a store that is away never takes the gateway's memory.
MAX_PENDING = 100_000
# How long health stays degraded after the last record dropped for a full queue: long
# enough for a dashboard polling /health to show it, and it then recovers on its own.
DROPPED_NOTICE = 300.0


class Queue:
    """Records waiting for a store's writer thread, within MAX_PENDING."""

    def __init__(self, *, waits_for: str, max_pending: int | None = None) -> None:
        self.lock = threading.Lock()
        # Notified when there is something for the writer: a first record, a flush, a close.
        self.wake = threading.Condition(self.lock)
        self.pending: list[UsageRecord] = []
        self.since = 0.0  # when the first of them was appended
        self.dropped = 0
        self.dropped_at = 0.0  # when the last of them was dropped
        self.flushes: list[Future[None]] = []
        self.closing = False
        self.stopped = False
        # None: MAX_PENDING, read when it counts.
        self._max_pending = max_pending
        # What the records wait for, as the log line says it ("the disk", "the database").
        self._waits_for = waits_for
        self._thread: threading.Thread | None = None

    @property
    def max_pending(self) -> int:
        return MAX_PENDING if self._max_pending is None else self._max_pending

    def append(self, record: UsageRecord) -> None:
        """Queue a record; never blocks on storage. Past the bound, the record is dropped,
        counted, and logged (once, then every thousandth)."""
        with self.lock:
            # Not the property: this runs on every call.
            limit = self._max_pending or MAX_PENDING
            if len(self.pending) >= limit:
                self.dropped += 1
                self.dropped_at = time.monotonic()
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error(
                        "USAGE RECORDS DROPPED: %d records wait for %s already; %d dropped so far",
                        limit,
                        self._waits_for,
                        self.dropped,
                    )
                return
            self.pending.append(record)
            if len(self.pending) == 1:
                self.since = time.monotonic()
                self.wake.notify()

    def put_back(self, batch: list[UsageRecord]) -> None:
        """A batch the store refused goes back at the head of the queue, the oldest kept as
        append() keeps them. Call it holding `lock`."""
        self.pending[:0] = batch
        limit = self.max_pending
        over = len(self.pending) - limit
        if over > 0:  # appends arrived meanwhile
            del self.pending[limit:]
            self.dropped += over
            self.dropped_at = time.monotonic()

    def start(self, loop: Callable[[], None]) -> None:
        """Run the store's writer loop in the writer thread."""
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name="usage-writer", daemon=True
        )
        self._thread.start()

    def _run(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        finally:
            # Normally at close; if a bug ended the thread, nobody may wait on it forever.
            with self.lock:
                self.stopped = True
                flushes, self.flushes = self.flushes, []
            for flushed in flushes:
                flushed.set_result(None)

    def flush(self) -> Future[None]:
        """Done once the writer has stored (or failed to store) everything queued so far."""
        done: Future[None] = Future()
        with self.wake:
            if self.stopped:
                done.set_result(None)
            else:
                self.flushes.append(done)
                self.wake.notify()
        return done

    def close(self) -> bool:
        """Have the writer store what is left and stop, and wait for it; False if the queue
        was closed already."""
        with self.wake:
            if self.closing:
                return False
            self.closing = True
            self.wake.notify()
        if self._thread is not None:
            self._thread.join()
        return True

    def held(self) -> tuple[int, str | None, bool]:
        """Records waiting, what health says of records dropped for a full queue (None once
        DROPPED_NOTICE has passed since the last), and whether the writer stopped on its own."""
        with self.lock:
            waiting, dropped, since = len(self.pending), self.dropped, self.dropped_at
            stopped = self.stopped and not self.closing
        note = None
        ago = time.monotonic() - since
        if dropped and ago < DROPPED_NOTICE:
            note = (
                f"{dropped} usage records dropped since start, the last {ago:.0f} s ago: "
                f"{self.max_pending} records already waited for {self._waits_for} "
                "(the bound on records held in memory)"
            )
        return waiting, note, stopped
