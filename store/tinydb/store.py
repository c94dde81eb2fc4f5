"""The usage store: a journal for durability, TinyDB files for keeping, one writer.

append() only queues a record. One writer thread takes whatever has queued up,
appends it to the journal as JSON lines and fsyncs once for the batch (a group
commit): that is when a record is safe. From time to time the same thread folds
the journaled records into the newest TinyDB file (data/usage/DAY-NNNN.json,
rewritten whole by atomic replace, at most SEGMENT_RECORDS records), then empties
the journal. Full files are closed for good, with a summary and a row index
beside them (store/tinydb/files.py), so no write ever touches more than one file's worth
of history.

Queries and stats run on a second thread. They see every appended record: the
queue, the journal's records and the newest file are in memory; closed files
are read only where their summary says they may hold what is asked.

What is done about a damaged file and a crash (repair, the journal's replay) is in
recovery.py, the deletion of old records in retention.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from .. import spill
from ..base import FolderInUse, StoreError, StoreHealth, export_pages
from ..records import Stats, UsageQuery, UsageRecord
from ..spill import write_all as _write_all
from ..writer import Queue
from . import files, reading
from .files import OpenSegment, Row, SegmentMeta
from .recovery import Damage, Recovery
from .retention import RETENTION_EVERY, Retention

log = logging.getLogger("ollama_host.store")

SEGMENT_RECORDS = 4096
SEGMENT_BYTES = 8 << 20
# When to fold the journal into the newest TinyDB file. Each fold rewrites that file
# whole, so it waits until the journal holds a quarter of the file's size (writes stay
# within about 5x the data), at most once a second (under heavy traffic, folds of a
# whole file's worth: about 1x), or until a record is 5 minutes old (light traffic).
FOLD_SHARE = 4
FOLD_MIN_SECONDS = 1.0
FOLD_RECORDS = 4096
FOLD_MAX_SECONDS = 300.0
RETRY_SECONDS = 1.0
# How long the first record of a batch waits for more before the journal write and fsync.
GROUP_COMMIT = 0.01
# Closed files whose rows queries keep decoded (about 1 MB each).
CACHED_SEGMENTS = 16
# How often a query is asked again when files change under it, at most.
MAX_ASKS = 20


def _lock_folder(folder: Path) -> int:
    """Hold an exclusive lock on the data folder for the life of the process."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; one gateway per folder is on the user.
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderInUse(
            f"another gateway is already using the data folder {folder}; "
            "stop it, or give this one its own folder with --data"
        ) from None
    return fd


class TinyDBStore(Recovery, Retention):
    """Append usage records and read them back, newest first (a `store.base.UsageStore`)."""

    # One process writes the folder, under a lock.
    shared = False

    def __init__(
        self, folder: Path, *, retention_days: float | None = None, spill: bool = True
    ) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock_folder(folder)
        except OSError as exc:
            raise StoreError(f"cannot use the data folder {folder}: {exc}") from None
        self.folder = folder
        self.path = folder / "usage"
        self.retention_days = retention_days
        # Whether records the disk refuses at close are spilled (store/spill.py).
        self.spill = spill
        # Records appended (by the event loop) and deleted by retention (by the writer)
        # since startup: `changes`, the dashboard's ETag, is their sum, so a page polling
        # an idle gateway still sees old calls leave its totals. Two counters, each written
        # by one thread only, so neither update can be lost.
        self.appended = 0
        self.deleted = 0
        # Records appended, not yet in the journal, and the writer thread (store/writer.py);
        # its lock guards everything below too, so a query sees each record in one place.
        self._queue = Queue(waits_for="the disk")
        self._lock = self._queue.lock
        # Notified whenever the closed files change (a fold, a repair, retention).
        self._changed = threading.Condition(self._lock)
        # Appended, not yet in the journal / being written to it / in the journal, not yet folded.
        self._committing: list[UsageRecord] = []
        self._unfolded: list[tuple[UsageRecord, bytes]] = []
        self._metas: list[SegmentMeta] = []
        self._cache: OrderedDict[tuple[str, int], list[Row]] = OrderedDict()
        # Damage found since startup, by file name; and the closed files (name, size) whose
        # rows queries must take from what still reads, until the writer has repaired them.
        self._damage: dict[str, Damage] = {}
        self._suspect: set[tuple[str, int]] = set()
        self._repairs: list[str] = []
        self._journal_error: str | None = None
        self._fold_error: str | None = None
        self._retry_at = 0.0
        self._fold_retry_at = 0.0
        self._unfolded_bytes = 0
        self._unfolded_since = 0.0  # when the oldest record not yet folded was journaled
        self._folded_at = 0.0
        self._retention_at = 0.0
        try:
            self._open_files()
        except OSError as exc:
            os.close(self._lock_fd)
            raise StoreError(f"cannot open the usage files in {self.path}: {exc}") from None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-reader")
        self._queue.start(self._loop)

    # -- startup ---------------------------------------------------------------

    def _open_files(self) -> None:
        usage = self.path
        (usage / files.INDEX).mkdir(parents=True, exist_ok=True)
        for stale in [*usage.glob("*.tmp"), *(usage / files.INDEX).glob("*.tmp")]:
            stale.unlink()  # a write that a crash interrupted; its old file is intact
        names = sorted(
            (p.name for p in usage.iterdir() if files.SEGMENT_NAME.fullmatch(p.name)),
            key=files.segment_key,
        )
        newest = names.pop() if names else None
        for name in names:
            meta = self._closed_meta(name)
            if meta is not None:
                self._metas.append(meta)
        self._open = self._open_newest(newest)
        self._journal_fd = os.open(
            usage / files.JOURNAL, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600
        )
        self._import_single_file()
        self._unfolded = self._replay_journal()
        self._unfolded_bytes = sum(len(line) + 1 for _, line in self._unfolded)
        self._journal_size = os.fstat(self._journal_fd).st_size
        if self._unfolded:
            try:
                self._fold()
            except OSError as exc:
                self._fold_failed(exc)

    def _closed_meta(self, name: str) -> SegmentMeta | None:
        """A closed file's meta from its summary, checked against the file's size only,
        so startup does not read the history. A mismatch means the file changed: re-index."""
        path = self.path / name
        meta = files.read_meta(files.summary_path(self.path, name))
        if meta is not None and meta.size == path.stat().st_size:
            return meta
        indexed = self._reindex(name)
        return indexed[0] if indexed else None

    def _open_newest(self, name: str | None) -> OpenSegment:
        if name is not None:
            try:
                records = files.read_segment(self.path / name)
            except ValueError as exc:
                kept = self._salvage(name, str(exc))
                if kept:
                    files.atomic_write(self.path / name, files.tinydb_bytes(kept[1]))
                    return OpenSegment(name, *kept, sum(map(len, kept[1])))
            else:
                lines = [files.encode(r) for r in records]
                return OpenSegment(name, records, lines, sum(map(len, lines)))
        return OpenSegment(self._next_name(name), [], [], 0)

    def _next_name(self, after: str | None) -> str:
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        if after is None:
            return files.segment_name(today, 1)
        day, seq = files.segment_key(after)
        # Names must sort in the order written, even if the clock steps back.
        return files.segment_name(day, seq + 1) if day >= today else files.segment_name(today, 1)

    # -- writing ---------------------------------------------------------------

    @property
    def changes(self) -> int:
        return self.appended + self.deleted

    def append(self, record: UsageRecord) -> None:
        """Queue a record. Never blocks on the disk; safe to call from the event loop."""
        self.appended += 1
        self._queue.append(record)

    def _loop(self) -> None:
        while True:
            with self._queue.wake:
                while True:
                    now = time.monotonic()
                    if self._queue.closing or self._queue.flushes or self._repairs:
                        break
                    if self._queue.pending and now >= self._commit_at():
                        break
                    due = self._next_due(now)
                    if due <= now:
                        break
                    self._queue.wake.wait(due - now)
                ready = now >= self._retry_at or self._queue.closing or self._queue.flushes
                batch = self._queue.pending if ready else []
                if batch:
                    self._queue.pending = []
                    self._committing = batch
                flushes, self._queue.flushes = self._queue.flushes, []
                repairs, self._repairs = self._repairs, []
                closing = self._queue.closing
            if batch:
                self._commit(batch)
            for name in repairs:
                self._repair(name)
            now = time.monotonic()
            if self._unfolded and (closing or flushes or self._fold_due(now)):
                try:
                    self._fold()
                except OSError as exc:
                    self._fold_failed(exc)
            if self.retention_days is not None and now >= self._retention_at:
                self._retention_at = now + RETENTION_EVERY
                try:
                    self._apply_retention()
                except (OSError, ValueError) as exc:
                    log.error("retention could not delete old usage records: %s", exc)
            for flushed in flushes:
                flushed.set_result(None)
            if closing:
                with self._lock:
                    if not self._queue.pending:
                        return
                    refused, self._queue.pending = self._queue.pending, []
                    error = self._journal_error
                if error:
                    self._spill(refused, error)
                    return
                with self._lock:  # appended while this batch was written: one more round
                    self._queue.pending[:0] = refused

    def _spill(self, records: list[UsageRecord], error: str) -> None:
        """The disk refuses the records left at close: write them somewhere else, and say
        where and how to import them, rather than lose them."""
        count = len(records)
        if not self.spill:
            log.error("%d usage records were not written (%s)", count, error)
            return
        lines = [files.encode(r) for r in records if _encodable(r)]
        try:
            where, refused = spill.spill(lines)
        except OSError as exc:
            log.error(
                "USAGE RECORDS LOST: %d records could not be written before exit (%s), "
                "nor spilled anywhere else (standard error: %s)",
                count,
                error,
                exc,
            )
            return
        if where == spill.STDERR:
            place = (
                f"standard error, one record per line after {spill.SPILL_PREFIX!r}: save those "
                "lines to a file (the systemd journal keeps them: journalctl -u UNIT -o cat "
                "| grep 'USAGE RECORD SPILL' > FILE)"
            )
        else:
            place = where
        if refused:
            place += f" (refused: {'; '.join(refused)})"
        log.error(
            "USAGE RECORDS SPILLED: the disk refused %d records at exit (%s); they are in %s. "
            "Once there is space, with the gateway stopped, import them with: %s",
            count,
            error,
            place,
            spill.import_command(where, ["--data", str(self.folder.resolve())]),
        )

    def _fold_due(self, now: float) -> bool:
        return now >= self._fold_retry_at and (
            len(self._unfolded) >= FOLD_RECORDS
            or now >= self._fold_by_size_at()
            or now - self._unfolded_since >= FOLD_MAX_SECONDS
        )

    def _fold_by_size_at(self) -> float:
        if self._unfolded_bytes * FOLD_SHARE >= self._open.size:
            return self._folded_at + FOLD_MIN_SECONDS
        return float("inf")

    def _commit_at(self) -> float:
        # Group commit: the first record of a batch waits GROUP_COMMIT seconds for others,
        # so a steady trickle of calls costs one journal write and fsync per window, not
        # per call (at one client, per-call fsyncs took a seventh of the gateway's core).
        return max(self._retry_at, self._queue.since + GROUP_COMMIT)

    def _next_due(self, now: float) -> float:
        due = now + 3600.0
        if self._queue.pending:
            due = min(due, self._commit_at())
        if self._unfolded:
            fold_at = min(self._unfolded_since + FOLD_MAX_SECONDS, self._fold_by_size_at())
            due = min(due, max(fold_at, self._fold_retry_at))
        if self.retention_days is not None:
            due = min(due, self._retention_at)
        return due

    def _commit(self, batch: list[UsageRecord]) -> None:
        lines: list[bytes] = []
        for record in batch:
            try:
                lines.append(files.encode(record))
            except (UnicodeEncodeError, msgspec.EncodeError) as exc:
                # msgspec refuses lone surrogates on the way in; this is a last guard.
                log.error("USAGE RECORD DROPPED: call %s cannot be encoded: %s", record.id, exc)
        if len(lines) < len(batch):
            batch = [r for r in batch if _encodable(r)]
        data = b"".join(line + b"\n" for line in lines)
        try:
            _write_all(self._journal_fd, data)
            os.fsync(self._journal_fd)
        except OSError as exc:
            # Cut off what a partial write left, so the journal holds whole lines only.
            with contextlib.suppress(OSError):
                os.ftruncate(self._journal_fd, self._journal_size)
            with self._lock:
                self._queue.put_back(batch)
                self._committing = []
            self._retry_at = time.monotonic() + RETRY_SECONDS
            error = f"cannot write the usage journal: {exc}"
            if error != self._journal_error:
                log.error("%s; %d records wait in memory and will be retried", error, len(batch))
            self._journal_error = error
            return
        self._journal_size += len(data)
        if not self._unfolded:
            self._unfolded_since = time.monotonic()
        self._unfolded_bytes += len(data)
        with self._lock:
            self._unfolded = self._unfolded + list(zip(batch, lines, strict=True))
            self._committing = []
        if self._journal_error:
            log.warning("the usage journal is writable again")
            self._journal_error = None

    def _fold(self) -> None:
        """Move the journaled records into TinyDB files, then empty the journal."""
        entries = self._unfolded
        current = self._open
        name, size = current.name, current.size
        records, lines = list(current.records), list(current.lines)
        closed: list[tuple[str, list[UsageRecord], list[bytes]]] = []
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        for record, line in entries:
            if records and (
                len(records) >= SEGMENT_RECORDS
                or size + len(line) > SEGMENT_BYTES
                or files.segment_key(name)[0] < today
            ):
                closed.append((name, records, lines))
                name, records, lines, size = self._next_name(name), [], [], 0
            records.append(record)
            lines.append(line)
            size += len(line)
        indexed = [files.write_segment(self.path, *closed_one) for closed_one in closed]
        files.atomic_write(self.path / name, files.tinydb_bytes(lines))
        spill.fsync_dir(self.path)
        spill.fsync_dir(self.path / files.INDEX)
        os.ftruncate(self._journal_fd, 0)
        os.fsync(self._journal_fd)
        self._journal_size = 0
        self._unfolded_bytes = 0
        self._folded_at = time.monotonic()
        with self._lock:
            self._metas = self._metas + [meta for meta, _ in indexed]
            self._changed.notify_all()
            self._open = OpenSegment(name, records, lines, size)
            self._unfolded = []
            for meta, rows in indexed:
                self._cache_put(meta, rows)
        if self._fold_error:
            log.warning("the usage files are writable again")
            self._fold_error = None

    def _fold_failed(self, exc: OSError) -> None:
        self._fold_retry_at = time.monotonic() + RETRY_SECONDS
        error = f"cannot write the usage files (records are safe in the journal): {exc}"
        if error != self._fold_error:
            log.error("%s", error)
        self._fold_error = error

    async def flush(self) -> None:
        """Wait until everything appended so far is in the TinyDB files (or has failed to be)."""
        await asyncio.wrap_future(self._flush())

    def sync(self) -> None:
        """flush(), for code without an event loop (blocks)."""
        self._flush().result()

    def _flush(self) -> Future[None]:
        return self._queue.flush()

    # -- reading ---------------------------------------------------------------

    def _in_memory(self) -> tuple[list[SegmentMeta], list[UsageRecord]]:
        """The closed files' metas, and every record not in a closed file, at one instant."""
        with self._lock:
            metas = self._metas
            recent = [*self._open.records, *(r for r, _ in self._unfolded)]
            recent += self._committing
            recent += self._queue.pending
        return metas, recent

    def _cache_put(self, meta: SegmentMeta, rows: list[Row]) -> None:
        self._cache[(meta.name, meta.size)] = rows
        while len(self._cache) > CACHED_SEGMENTS:
            self._cache.popitem(last=False)

    def _rows(self, meta: SegmentMeta) -> list[Row]:
        """A closed file's rows: from the cache, its rows file, or (if that is lost) the file."""
        key = (meta.name, meta.size)
        with self._lock:
            rows = self._cache.get(key)
            if rows is not None:
                self._cache.move_to_end(key)
                return rows
            suspect = key in self._suspect
        if suspect:
            return self._salvaged_rows(meta)
        try:
            rows = files.read_rows(files.rows_path(self.path, meta.name))
        except FileNotFoundError:
            if not (self.path / meta.name).exists():
                return []  # retention removed it while this query ran
            rows = None
        except (OSError, ValueError) as exc:
            log.warning("rebuilding the rows of %s (%s)", meta.name, exc)
            rows = None
        if rows is None:
            try:
                indexed = files.reindex(self.path, meta.name)
            except OSError as exc:
                log.error("USAGE FILE UNREADABLE, skipped by this query: %s", exc)
                return []
            except ValueError:
                self._found_damage([meta])
                return self._salvaged_rows(meta)
            rows = indexed[1] if indexed else []
        with self._lock:
            self._cache_put(meta, rows)
        return rows

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._query, q)

    def _query(self, q: UsageQuery) -> list[UsageRecord]:
        # Asked again when the page met damage (in files not met before: from then on they
        # are read around), or a file the writer rewrote since its rows were read: then
        # once the writer has said what the file now holds.
        for _ in range(MAX_ASKS):
            metas, recent = self._in_memory()
            page = reading.newest_page(q, metas, recent, self._rows, self.path)
            if page.damaged:
                self._found_damage(page.damaged)
            elif not page.moved:
                return page.records
            elif not self._wait_change(metas):
                # Rewritten, but not by the writer: have it read the file as it is now.
                self._found_damage(page.moved)
        log.error("a usage query met changing files %d times; its page may be short", MAX_ASKS)
        return page.records

    def known(self, ids: set[str]) -> set[str]:
        """Which of these record ids the store holds (blocks; reads the files that may)."""
        if not ids:
            return set()
        metas, recent = self._in_memory()
        found = {r.id for r in recent if r.id in ids}
        low, high = min(ids), max(ids)
        for meta in metas:
            if meta.max_id >= low and meta.min_id <= high:
                found.update(row.id for row in self._rows(meta) if row.id in ids)
        return found

    def _wait_change(self, metas: list[SegmentMeta]) -> bool:
        """Wait (a second at most) for the closed files to change from `metas`."""
        with self._changed:
            return self._changed.wait_for(lambda: self._metas is not metas, 1.0)

    async def stats(self, q: UsageQuery, *, bucket_seconds: int) -> Stats:
        """Aggregates over all records matching q's filters (q's paging is ignored)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._stats, q, bucket_seconds
        )

    def _stats(self, q: UsageQuery, bucket_seconds: int) -> Stats:
        return reading.stats_over(
            q, bucket_seconds, *self._in_memory(), self._rows, self.path, self._trusted
        )

    def _trusted(self, meta: SegmentMeta) -> bool:
        with self._lock:
            return (meta.name, meta.size) not in self._suspect

    def export(self, q: UsageQuery) -> AsyncIterator[list[UsageRecord]]:
        return export_pages(self, q)

    # -- state -----------------------------------------------------------------

    def health(self) -> StoreHealth:
        waiting, dropped, stopped = self._queue.held()
        with self._lock:
            pending = waiting + len(self._committing)
            damage = sorted(self._damage.values(), key=lambda d: d.name)
        error = self._journal_error or self._fold_error
        if stopped:
            error = "the usage writer stopped unexpectedly (see the log); restart the gateway"
        if dropped:
            error = f"{error}; {dropped}" if error else dropped
        if damage:
            error = "; ".join([*([error] if error else []), *(d.describe() for d in damage)])
        return StoreHealth(
            status="degraded" if error else "ok",
            path=str(self.path),
            pending=pending,
            error=error,
            damaged=[d.name for d in damage],
            dropped=self._queue.dropped,
        )

    def close(self) -> None:
        """Write everything out and release the folder (blocks until done)."""
        if not self._queue.close():
            return
        self._reader.shutdown(wait=True)
        os.close(self._journal_fd)
        os.close(self._lock_fd)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)


def _encodable(record: UsageRecord) -> bool:
    try:
        files.encode(record)
    except (UnicodeEncodeError, msgspec.EncodeError):
        return False
    return True
