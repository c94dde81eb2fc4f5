"""The usage store in PostgreSQL: one log that several gateways write and read.

append() only queues a record. A writer thread takes whatever has queued up (waiting
GROUP_COMMIT for more after the first) and sends it as one binary COPY, adds it to the
hourly and daily sums stats() reads (store/postgres/rollups.py), then moves the shared change
counter, in one transaction: that is when a record is safe. A batch the database saw already
(its commit was lost with the connection) would break the primary key: that batch is sent
again through a staging table with ON CONFLICT DO NOTHING, and only the records it added are
summed, so a record is stored and counted once however often it is sent.

While the database cannot be reached, records wait in memory (at most writer.MAX_PENDING), health
says `degraded`, and the writer tries again every RETRY_SECONDS; calls are answered
throughout. Queries and stats run on a small pool of connections, in threads, as SQL: every
value is a parameter. The `changes` counter, the dashboard's ETag, is the database's own (a
row moved in every writing transaction), read back by each write and polled every
WATCH_SECONDS, so it moves when any gateway records a call.

Requires the `postgres` extra (psycopg 3 and psycopg_pool).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import psycopg
import psycopg_pool
from psycopg import sql

from ..base import StoreError, StoreHealth, export_pages
from ..records import Stats, UsageQuery, UsageRecord
from ..stats import gpu_load_seconds
from ..writer import Queue
from . import database, rollups
from .database import SCHEMA, DatabaseUnavailable
from .rollups import text

log = logging.getLogger("ollama_host.store")
T = TypeVar("T")

GROUP_COMMIT = 0.01
# Records per COPY: big enough to amortize a transaction, small enough that a batch the
# database refuses costs little to send again.
MAX_BATCH = 5000
RETRY_SECONDS = 1.0
# How often each gateway reads the shared change counter: a dashboard sees another
# gateway's calls at most this much later than its own (its own once they are written).
WATCH_SECONDS = 0.25
RETENTION_EVERY = 3600.0
# At a clean stop with the database away: how long to keep trying before giving up loudly.
CLOSE_WAIT = 5.0
READERS = 2
# OFFSET is a bigint in PostgreSQL; anything past this skips every record anyway.
MAX_OFFSET = 1 << 62

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(UsageRecord).decode

USAGE = sql.Identifier(SCHEMA, "usage")
STATE = sql.Identifier(SCHEMA, "state")
# A record and the values COPY sends for it.
Row = tuple[UsageRecord, tuple[Any, ...]]

# Column, SQL type for COPY, and how a record fills it (the record itself is `doc`).
_TEXT = "text"
COLUMNS: list[tuple[str, str, Callable[[UsageRecord], Any]]] = [
    ("id", _TEXT, lambda r: r.id),
    ("date", "timestamptz", lambda r: _moment(r.date)),
    ("model_name", _TEXT, lambda r: text(r.model_name)),
    ("project", _TEXT, lambda r: text(r.project)),
    ("process_id", _TEXT, lambda r: text(r.process_id)),
    ("subprocess_id", _TEXT, lambda r: text(r.subprocess_id)),
    ("status", _TEXT, lambda r: r.status),
    ("input_tokens", "int8", lambda r: r.input_tokens),
    ("output_tokens", "int8", lambda r: r.output_tokens),
    ("total_seconds", "float8", lambda r: r.total_seconds),
    ("ttft_seconds", "float8", lambda r: r.ttft_seconds),
    ("eval_seconds", "float8", lambda r: r.eval_seconds),
    ("upstream_seconds", "float8", lambda r: r.upstream_seconds),
    ("tokens_estimated", "bool", lambda r: r.tokens_estimated),
    ("key_id", _TEXT, lambda r: text(r.key_id)),
    ("user", _TEXT, lambda r: text(r.user)),
    ("front", _TEXT, lambda r: text(r.front)),
    ("endpoint", _TEXT, lambda r: text(r.endpoint)),
    ("upstream", _TEXT, lambda r: text(r.upstream)),
    ("key_label", _TEXT, lambda r: text(r.key_label)),
    ("gpu_seconds", "float8", lambda r: r.gpu_seconds),
    ("gpu_load_seconds", "float8", lambda r: gpu_load_seconds(r) if r.gpu_seconds else None),
    ("cost", "float8", lambda r: r.cost),
]
_COLUMN_LIST = sql.SQL(", ").join(sql.Identifier(name) for name, _, _ in [*COLUMNS, ("doc", "", 0)])
# The record goes as its JSON text: in binary COPY a json value is sent as its text.
_COPY_TYPES = [kind for _, kind, _ in COLUMNS] + [_TEXT]


def _moment(date: str) -> datetime:
    moment = datetime.fromisoformat(date)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class StoreUnavailable(StoreError):
    """A read could not reach the database; the message says where and why."""


class PostgresStore:
    """Usage records in a PostgreSQL database (a `store.base.UsageStore`)."""

    # Every gateway pointed at the database writes and reads the same log.
    shared = True

    def __init__(self, dsn: str, *, retention_days: float | None = None) -> None:
        self.params = database.parse(dsn)
        self.address = database.where(self.params)
        database.migrate(self.params)
        self._conn: psycopg.Connection[Any] | None = database.connect(self.params, purpose="writer")
        self.retention_days = retention_days
        # Records appended and not yet sent, and the writer thread (store/writer.py).
        self._queue = Queue(waits_for="the database")
        self._lock = self._queue.lock
        self._committing = 0
        self._write_error: str | None = None
        self._retry_at = 0.0
        self._retention_at = 0.0
        self._changes = 0
        self._watch = database.Watch(
            self.params,
            sql.SQL("SELECT usage_changes FROM {}").format(STATE),
            self._seen,
            every=WATCH_SECONDS,
            name="usage-watch",
        )
        self._watch.poll()
        self._pool = psycopg_pool.ConnectionPool(
            kwargs={**self.params, "application_name": "ollama-host reader", "autocommit": True},
            min_size=1,
            max_size=READERS,
            timeout=float(self.params["connect_timeout"]) + 1,
            check=psycopg_pool.ConnectionPool.check_connection,
            open=False,
            name="usage-readers",
        )
        self._pool.open(wait=False)
        self._reader = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="usage-reader")
        self._queue.start(self._loop)
        self._watch.start()

    # -- the change counter ----------------------------------------------------------------------

    def _seen(self, row: tuple[Any, ...]) -> bool:
        self._moved(int(row[0]))
        return True

    def _moved(self, value: int) -> None:
        with self._lock:
            self._changes = max(self._changes, value)

    @property
    def changes(self) -> int:
        return self._changes

    # -- writing ---------------------------------------------------------------------------------

    def append(self, record: UsageRecord) -> None:
        self._queue.append(record)

    def _loop(self) -> None:
        try:
            self._write_all()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _write_all(self) -> None:
        closing_since: float | None = None
        while True:
            with self._queue.wake:
                while True:
                    now = time.monotonic()
                    if self._queue.closing or self._queue.flushes:
                        break
                    if self._queue.pending and now >= max(
                        self._retry_at, self._queue.since + GROUP_COMMIT
                    ):
                        break
                    due = now + 3600.0
                    if self._queue.pending:
                        due = max(self._retry_at, self._queue.since + GROUP_COMMIT)
                    if self.retention_days is not None:
                        due = min(due, self._retention_at)
                    if due <= now:
                        break
                    self._queue.wake.wait(due - now)
                closing = self._queue.closing
                ready = now >= self._retry_at or closing or self._queue.flushes
                batch = self._queue.pending[:MAX_BATCH] if ready else []
                if batch:
                    del self._queue.pending[:MAX_BATCH]
                    self._committing = len(batch)
            written = self._write(batch) if batch else True
            if self.retention_days is not None and time.monotonic() >= self._retention_at:
                self._retention_at = time.monotonic() + RETENTION_EVERY
                self._apply_retention()
            with self._lock:
                done = not self._queue.pending or not written
                flushes = self._queue.flushes if done else []
                if done:
                    self._queue.flushes = []
                left = len(self._queue.pending)
            for flushed in flushes:
                flushed.set_result(None)
            if closing:
                if not left:
                    return
                closing_since = closing_since or time.monotonic()
                if not written and time.monotonic() - closing_since >= CLOSE_WAIT:
                    log.error(
                        "USAGE RECORDS LOST: %d records could not be written before exit (%s)",
                        left,
                        self._write_error,
                    )
                    return
                if not written:
                    time.sleep(min(RETRY_SECONDS, CLOSE_WAIT))

    def _rows(self, batch: list[UsageRecord]) -> list[Row]:
        rows: list[Row] = []
        for record in batch:
            try:
                doc = _encode(record).decode()
                rows.append((record, (*(fill(record) for _, _, fill in COLUMNS), doc)))
            except (UnicodeEncodeError, msgspec.EncodeError, ValueError) as exc:
                # msgspec refuses lone surrogates on the way in; this is a last guard.
                log.error("USAGE RECORD DROPPED: call %s cannot be stored: %s", record.id, exc)
        return rows

    def _write(self, batch: list[UsageRecord]) -> bool:
        """Store a batch; False (and the batch back at the head of the queue) if the
        database could not be reached."""
        rows = self._rows(batch)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = database.connect(self.params, purpose="writer")
            moved = self._send(self._conn, rows)
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            self._failed(batch, exc)
            return False
        except psycopg.Error as exc:
            # Not the connection: something in the batch itself. Send one record at a time,
            # so that one bad record costs only itself.
            log.error("a batch of usage records was refused (%s); storing them one by one", exc)
            moved = 0
            for row in rows:
                try:
                    assert self._conn is not None
                    moved = max(moved, self._send(self._conn, [row]))
                except psycopg.OperationalError as again:
                    self._failed(batch, again)
                    return False
                except psycopg.Error as bad:
                    log.error("USAGE RECORD DROPPED: call %s was refused: %s", row[0].id, bad)
        self._moved(moved)
        with self._lock:
            self._committing = 0
        if self._write_error:
            log.warning("PostgreSQL at %s takes usage records again", self.address)
            self._write_error = None
        return True

    def _send(self, conn: psycopg.Connection[Any], rows: list[Row]) -> int:
        """One transaction: the rows, their sums, then the change counter; returns the
        counter. Only the records not stored before are summed."""
        with conn.transaction(), conn.cursor() as cur:
            added = [record for record, _ in rows]
            try:
                with conn.transaction():
                    self._copy(cur, USAGE, rows)
            except psycopg.errors.UniqueViolation:
                # Some were stored already (a commit whose answer was lost): skip those.
                cur.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE IF NOT EXISTS usage_incoming "
                        "(LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                    ).format(USAGE)
                )
                staging = sql.Identifier("usage_incoming")
                self._copy(cur, staging, rows)
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} SELECT * FROM {} ON CONFLICT (id) DO NOTHING RETURNING id"
                    ).format(USAGE, staging)
                )
                new = {found for (found,) in cur.fetchall()}
                added = [record for record in added if record.id in new]
            rollups.add(cur, added)
            cur.execute(
                sql.SQL(
                    "UPDATE {} SET usage_changes = usage_changes + %s RETURNING usage_changes"
                ).format(STATE),
                (len(rows),),
            )
            found = cur.fetchone()
        return int(found[0]) if found else 0

    @staticmethod
    def _copy(cur: psycopg.Cursor[Any], table: sql.Identifier, rows: list[Row]) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, _COLUMN_LIST)
        with cur.copy(statement) as copy:
            copy.set_types(_COPY_TYPES)
            for _, row in rows:
                copy.write_row(row)

    def _failed(self, batch: list[UsageRecord], exc: psycopg.Error | DatabaseUnavailable) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._lock:
            self._queue.put_back(batch)
            self._committing = 0
        self._retry_at = time.monotonic() + RETRY_SECONDS
        error = str(exc) if isinstance(exc, StoreError) else database.unreachable(self.params, exc)
        if error != self._write_error:
            log.error("%s; %d usage records wait in memory and will be retried", error, len(batch))
        self._write_error = error

    def _apply_retention(self) -> None:
        assert self.retention_days is not None
        cutoff = datetime.now(UTC) - timedelta(days=self.retention_days)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = database.connect(self.params, purpose="writer")
            with self._conn.transaction(), self._conn.cursor() as cur:
                removed = rollups.retain(cur, cutoff)
                if removed:
                    cur.execute(
                        sql.SQL(
                            "UPDATE {} SET usage_changes = usage_changes + %s "
                            "RETURNING usage_changes"
                        ).format(STATE),
                        (removed,),
                    )
                    found = cur.fetchone()
                    self._moved(int(found[0]) if found else 0)
        except (psycopg.Error, DatabaseUnavailable) as exc:
            self._retention_at = time.monotonic() + RETRY_SECONDS * 60
            log.error("retention could not delete old usage records: %s", exc)
            return
        if removed:
            log.info(
                "retention: deleted %d usage records older than %g days",
                removed,
                self.retention_days,
            )

    async def flush(self) -> None:
        await asyncio.wrap_future(self._queue.flush())

    # -- reading ---------------------------------------------------------------------------------

    async def _read(self, work: Callable[[psycopg.Cursor[Any]], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._on_pool, work)

    def _on_pool(self, work: Callable[[psycopg.Cursor[Any]], T]) -> T:
        if self._watch.error is not None:
            # Known to be away: say so now, rather than after the pool's wait for a connection.
            raise StoreUnavailable(self._watch.error)
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                return work(cur)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            reason = (
                database.unreachable(self.params, exc)
                if isinstance(exc, psycopg.Error)
                else f"cannot reach PostgreSQL at {self.address}: no connection within "
                f"{self._pool.timeout:g} s"
            )
            raise StoreUnavailable(reason) from None

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        where, params = rollups.where(q, paging=True)
        statement = sql.SQL(
            "SELECT doc::text FROM {} {} ORDER BY id DESC LIMIT %s OFFSET %s"
        ).format(USAGE, where)
        arguments = [*params, q.limit, min(q.offset, MAX_OFFSET)]

        def run(cur: psycopg.Cursor[Any]) -> list[UsageRecord]:
            cur.execute(statement, arguments)
            return [_decode(doc) for (doc,) in cur.fetchall()]

        return await self._read(run)

    async def stats(self, q: UsageQuery, *, bucket_seconds: int) -> Stats:
        return await self._read(lambda cur: rollups.stats(cur, q, bucket_seconds))

    def export(self, q: UsageQuery) -> AsyncIterator[list[UsageRecord]]:
        return export_pages(self, q)

    # -- state -----------------------------------------------------------------------------------

    def health(self) -> StoreHealth:
        waiting, dropped, stopped = self._queue.held()
        pending = waiting + self._committing
        error = self._write_error or self._watch.error
        if stopped:
            error = "the usage writer stopped unexpectedly (see the log); restart the gateway"
        if dropped:
            error = f"{error or 'the database refused records'}; {dropped} records dropped"
        return StoreHealth(
            status="degraded" if error else "ok",
            path=f"postgresql://{self.address}",
            pending=pending,
            error=error,
        )

    def close(self) -> None:
        if not self._queue.close():
            return
        self._watch.stop()
        self._reader.shutdown(wait=True)
        self._pool.close()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)
