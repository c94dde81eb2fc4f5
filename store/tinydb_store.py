"""The usage store: records go onto a TinyDB JSON file, written by one thread.

TinyDB is synchronous and not thread-safe, so exactly one worker thread owns the
database: appends are queued from the event loop without waiting, and the worker
writes whatever has queued up as one batch. Queries run on the same thread.

Every write replaces the file atomically (temp file, fsync, rename), so a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from tinydb import TinyDB
from tinydb.storages import Storage

from .records import Stats, UsageQuery, UsageRecord, iso
from .stats import compute_stats

log = logging.getLogger("ollama_host.store")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, dict[str, Any]]).decode
_to_builtins = msgspec.to_builtins


class StoreError(Exception):
    """The usage store cannot open; the message says why and what to do."""


class StoreHealth(msgspec.Struct):
    status: str  # "ok" or "degraded"
    path: str
    pending: int
    error: str | None = None


class AtomicJSONStorage(Storage):
    """TinyDB's JSON format, written by atomic replace instead of in place."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return None
        return _decode(raw) if raw.strip() else None

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(_encode(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._path)
        _fsync_dir(self._path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk too.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
        raise StoreError(
            f"another gateway is already using the data folder {folder}; "
            "stop it, or give this one its own folder with --data"
        ) from None
    return fd


def _matches(doc: dict[str, Any], q: UsageQuery, since: str | None, until: str | None) -> bool:
    return (
        (q.project is None or doc.get("project") == q.project)
        and (q.process_id is None or doc.get("process_id") == q.process_id)
        and (q.subprocess_id is None or doc.get("subprocess_id") == q.subprocess_id)
        and (q.model is None or doc.get("model_name") == q.model)
        and (q.status is None or doc.get("status") == q.status)
        and (since is None or doc.get("date", "") >= since)
        and (until is None or doc.get("date", "") < until)
        and (q.before is None or doc.get("id", "") < q.before)
        and (q.after is None or doc.get("id", "") > q.after)
    )


class UsageStore:
    """Append usage records and read them back, newest first."""

    FILENAME = "usage.json"

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / self.FILENAME
        self._lock_fd = _lock_folder(folder)
        self._set_aside_if_corrupt()
        self._db = TinyDB(str(self.path), storage=AtomicJSONStorage)
        self._table = self._db.table("usage")
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-store")
        self._guard = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._draining = False
        self._error: str | None = None

    def _set_aside_if_corrupt(self) -> None:
        try:
            AtomicJSONStorage(str(self.path)).read()
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            os.replace(self.path, aside)
            log.error(
                "USAGE FILE UNREADABLE (%s): moved it aside to %s and started a new one; "
                "nothing was deleted",
                exc,
                aside,
            )

    # -- writing ---------------------------------------------------------------

    def append(self, record: UsageRecord) -> None:
        """Queue a record. Never blocks on the disk; safe to call from the event loop."""
        doc = _to_builtins(record)
        with self._guard:
            self._pending.append(doc)
            if self._draining:
                return
            self._draining = True
        self._worker.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._guard:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            try:
                self._table.insert_multiple(batch)
            except OSError as exc:
                with self._guard:
                    self._pending[:0] = batch
                    self._draining = False
                self._error = f"cannot write the usage file: {exc}"
                log.error(
                    "%s; %d records are held in memory and will be retried", self._error, len(batch)
                )
                return
            self._error = None

    async def flush(self) -> None:
        """Wait until everything appended so far has been written (or has failed to)."""
        with self._guard:
            retry = bool(self._pending) and not self._draining
            if retry:
                self._draining = True
        if retry:
            self._worker.submit(self._drain)
        await asyncio.get_running_loop().run_in_executor(self._worker, lambda: None)

    # -- reading ---------------------------------------------------------------

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._query, q)

    def _query(self, q: UsageQuery) -> list[UsageRecord]:
        since = iso(q.since) if q.since else None
        until = iso(q.until) if q.until else None
        docs = [doc for doc in self._table.all() if _matches(doc, q, since, until)]
        docs.sort(key=lambda doc: doc.get("id", ""), reverse=True)
        page = docs[q.offset : q.offset + q.limit]
        return [msgspec.convert(doc, UsageRecord) for doc in page]

    async def stats(self, q: UsageQuery, *, bucket_seconds: int) -> Stats:
        """Aggregates over all records matching q's filters (q's paging is ignored)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._worker, self._stats, q, bucket_seconds
        )

    def _stats(self, q: UsageQuery, bucket_seconds: int) -> Stats:
        since = iso(q.since) if q.since else None
        until = iso(q.until) if q.until else None
        docs = (doc for doc in self._table.all() if _matches(doc, q, since, until))
        return compute_stats(docs, bucket_seconds)

    def health(self) -> StoreHealth:
        with self._guard:
            pending = len(self._pending)
        status = "degraded" if self._error else "ok"
        return StoreHealth(status=status, path=str(self.path), pending=pending, error=self._error)

    def close_now(self) -> None:
        """Close a store that was never used (the gateway refused to start)."""
        self._worker.shutdown(wait=True)
        self._db.close()
        os.close(self._lock_fd)

    async def aclose(self) -> None:
        await self.flush()
        self._worker.shutdown(wait=True)
        self._db.close()
        os.close(self._lock_fd)
