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

from .. import spill
from ..base import StoreError, StoreHealth, export_pages
from ..records import Stats, UsageQuery, UsageRecord
from ..stats import gpu_load_seconds
from ..writer import Queue
from . import database, pending, rollups
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
# At a clean stop with the database away (or silent): how long to keep trying before the
# records left are spilled. A stop's grace is over by then; systemd waits 10 s more
# (ollama_host/launcher.py), uvicorn's own cut-off takes 4 of them.
CLOSE_WAIT = 5.0
# Health turns degraded when records wait and no write has completed for this long (a
# database that holds the connection and answers nothing).
STALL_SECONDS = 10.0
# How long health names records the database refused after the last of them.
REFUSED_NOTICE = 300.0
READERS = 2
# OFFSET is a bigint in PostgreSQL; anything past this skips every record anyway.
MAX_OFFSET = 1 << 62

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
# The 64-bit columns, checked before COPY (which would raise OverflowError mid-batch).
_INT8 = [at for at, (_, kind, _) in enumerate(COLUMNS) if kind == "int8"]


def _moment(date: str) -> datetime:
    moment = datetime.fromisoformat(date)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class StoreUnavailable(StoreError):
    """A read could not reach the database; the message says where and why."""


class PostgresStore:
    """Usage records in a PostgreSQL database (a `store.base.UsageStore`)."""

    # Every gateway pointed at the database writes and reads the same log.
    shared = True

    def __init__(
        self, dsn: str, *, retention_days: float | None = None, spill: bool = True
    ) -> None:
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
        # Records on the local file of pending records (store/postgres/pending.py): how many
        # at the head of the queue are there already, and when the file was last added to.
        # None when the store does not spill (the import's own store).
        self._pending = pending.PendingFile() if spill else None
        self._journaled = 0
        self._journaled_at = 0.0
        # The last write that completed (health's measure of a stall), the deadline of the
        # one running now, and when a stop wants the writer done.
        self._written_at = time.monotonic()
        self._deadline: database.Deadline | None = None
        # The reads running now: a stop shortens their deadlines as the writer's.
        self._reading: set[database.Deadline] = set()
        self._close_by: float | None = None
        # Records the database refused (not the connection: the records themselves, or a
        # table it cannot write), spilled: how many, why, where, and when the last was.
        self._refused = 0
        self._refused_why: str | None = None
        self._refused_where: str | None = None
        self._refused_at = 0.0
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
            check=self._check,
            open=False,
            name="usage-readers",
        )
        self._pool.open(wait=False)
        self._reader = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="usage-reader")
        if spill:
            self._left_behind()
        self._queue.start(self._loop)
        self._watch.start()

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection before a read, bounded like any operation."""
        with database.bounded(conn, self.params, database.POLL_SECONDS):
            psycopg_pool.ConnectionPool.check_connection(conn)

    def _left_behind(self) -> None:
        """Say where the records of a gateway killed while they waited are."""
        for path, count in pending.left_behind():
            log.error(
                "USAGE RECORDS SPILLED: a gateway was stopped (killed) before PostgreSQL took "
                "%d records; they are in %s. Import them with: %s",
                count,
                path,
                self._import_command(str(path)),
            )

    def _import_command(self, where: str) -> str:
        return (
            spill.import_command(where, ["--store", f"postgresql://{self.address}"])
            + " (with the password in the address, or in PGPASSWORD)"
        )

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
            # Whatever is left (a stop, or a bug that ended the loop) is spilled, never lost.
            with self._lock:
                left, self._queue.pending = self._queue.pending, []
                journaled, self._journaled = self._journaled, 0
            self._spill_at_stop(left, journaled)

    def _write_all(self) -> None:
        while True:
            with self._queue.wake:
                while True:
                    now = time.monotonic()
                    if self._queue.closing or self._queue.flushes:
                        break
                    pending_ = self._queue.pending
                    if pending_ and now >= max(self._retry_at, self._queue.since + GROUP_COMMIT):
                        break
                    due = now + 3600.0
                    if pending_:
                        due = max(self._retry_at, self._queue.since + GROUP_COMMIT)
                        if (
                            self._retry_at > now
                            and len(pending_) > self._journaled
                            and self._pending is not None
                        ):
                            # Waiting for the database: what queues up goes to the file.
                            journal_at = self._journaled_at + pending.JOURNAL_EVERY
                            if now >= journal_at:
                                break
                            due = min(due, journal_at)
                    if self.retention_days is not None:
                        due = min(due, self._retention_at)
                    if due <= now:
                        break
                    self._queue.wake.wait(due - now)
                closing = self._queue.closing
                ready = now >= self._retry_at or closing or self._queue.flushes
                batch = self._queue.pending[:MAX_BATCH] if ready else []
                known = 0
                if batch:
                    del self._queue.pending[:MAX_BATCH]
                    self._committing = len(batch)
                    known = min(self._journaled, len(batch))
                    self._journaled -= known
                    waiting = []
                else:
                    waiting = self._queue.pending[self._journaled :]
            if batch:
                # Each record is encoded once, for the file of pending records and for COPY.
                docs = [pending.doc(record) for record in batch]
                if self._pending is not None:
                    self._pending.write_lines([doc for doc in docs[known:] if doc is not None])
                    self._journaled_at = time.monotonic()
                written = self._write(batch, docs)
            else:
                if self._pending is not None and waiting:
                    self._pending.write(waiting)
                    self._journaled_at = time.monotonic()
                    with self._lock:
                        self._journaled += len(waiting)
                written = True
            if self.retention_days is not None and time.monotonic() >= self._retention_at:
                self._retention_at = time.monotonic() + RETENTION_EVERY
                self._apply_retention()
            with self._lock:
                done = not self._queue.pending or not written
                flushes = self._queue.flushes if done else []
                if done:
                    self._queue.flushes = []
                left = len(self._queue.pending)
                # Nothing on the file waits any more. (Only this thread writes the file and
                # counts what is on it: it is emptied outside the lock append() takes.)
                emptied = written and bool(batch) and not self._journaled
            if emptied and self._pending is not None:
                self._pending.clear()
            for flushed in flushes:
                flushed.set_result(None)
            if closing:
                if not left:
                    return
                close_by = self._close_by or time.monotonic()
                if not written and time.monotonic() >= close_by:
                    return  # _loop spills what is left
                if not written:
                    time.sleep(max(0.0, min(RETRY_SECONDS, close_by - time.monotonic())))

    def _spill_at_stop(self, left: list[UsageRecord], journaled: int) -> None:
        """The stop could not write these (the first `journaled` of them are on the file of
        pending records already): they go to the spill, with the import command."""
        if not left:
            if self._pending is not None:
                self._pending.remove()
            return
        why = self._write_error or "the writer stopped"
        if self._pending is None:  # the import's store: the records are still in its files
            log.error("%d usage records were not written (%s)", len(left), why)
            return
        # The file holds every record left (each was added before it was sent, or while
        # it waited), and perhaps a few the database took: the import adds each once.
        self._pending.write(left[journaled:])
        where = self._pending.keep()
        if where is None:
            try:
                where, _ = spill.spill(pending.encodable(left))
            except OSError as exc:
                log.error(
                    "USAGE RECORDS LOST: %d records could not be written before exit (%s), "
                    "nor spilled anywhere (standard error: %s)",
                    len(left),
                    why,
                    exc,
                )
                return
        log.error(
            "USAGE RECORDS SPILLED: %d records could not be written to PostgreSQL before exit "
            "(%s); they are in %s. Once it takes them, import them with: %s",
            len(left),
            why,
            where,
            self._import_command(where),
        )

    def _rows(
        self, batch: list[UsageRecord], docs: list[bytes | None]
    ) -> tuple[list[Row], list[tuple[UsageRecord, str]]]:
        """The rows COPY sends (each record's JSON is in `docs`), and the records that cannot
        be sent, each with why (they go to the spill)."""
        rows: list[Row] = []
        bad: list[tuple[UsageRecord, str]] = []
        for record, encoded in zip(batch, docs, strict=True):
            if encoded is None:
                # msgspec refuses lone surrogates on the way in; this is a last guard. Such a
                # record cannot be written anywhere, the spill included.
                log.error("USAGE RECORD DROPPED: call %s cannot be encoded as JSON", record.id)
                continue
            doc = encoded.decode()
            try:
                values = tuple(fill(record) for _, _, fill in COLUMNS)
                for at in _INT8:
                    value = values[at]
                    if value is not None and not -(2**63) <= value < 2**63:
                        raise ValueError(f"{COLUMNS[at][0]} = {value} is past a 64-bit integer")
            except (ValueError, TypeError) as exc:
                bad.append((record, str(exc)))
                continue
            rows.append((record, (*values, doc)))
        return rows, bad

    def _write(self, batch: list[UsageRecord], docs: list[bytes | None]) -> bool:
        """Store a batch; False (and the batch back at the head of the queue) if the
        database could not be reached. A record the database refuses (or that cannot be
        sent) goes to the spill, and health says so: never nowhere."""
        rows, refused = self._rows(batch, docs)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = database.connect(
                    self.params, purpose="writer", timeout=self._time_left()
                )
            moved = self._bounded_send(self._conn, rows) if rows else 0
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            self._failed(batch, exc)
            return False
        except (psycopg.Error, OverflowError, ValueError, TypeError) as exc:
            # Not the connection: something in the batch itself, or a table the database
            # cannot write. Send one record at a time, so that one bad record costs only
            # itself.
            log.error("a batch of usage records was refused (%s); storing them one by one", exc)
            moved = 0
            for row in rows:
                try:
                    assert self._conn is not None
                    moved = max(moved, self._bounded_send(self._conn, [row]))
                except (psycopg.OperationalError, DatabaseUnavailable) as again:
                    self._failed(batch, again)
                    return False
                except (psycopg.Error, OverflowError, ValueError, TypeError) as bad:
                    refused.append((row[0], " ".join(str(bad).split())))
        self._moved(moved)
        with self._lock:
            self._committing = 0
        self._written_at = time.monotonic()
        if refused:
            self._refuse(refused)
        if self._write_error:
            log.warning("PostgreSQL at %s takes usage records again", self.address)
            self._write_error = None
        return True

    def _time_left(self) -> float | None:
        """What is left of a stop's wait (None: no stop)."""
        close_by = self._close_by
        return None if close_by is None else max(0.0, close_by - time.monotonic())

    def _bounded_send(self, conn: psycopg.Connection[Any], rows: list[Row]) -> int:
        left = self._time_left()
        seconds = database.OPERATION_SECONDS
        if left is not None:
            seconds = min(left, seconds)
        with database.bounded(conn, self.params, seconds) as deadline:
            with self._lock:
                self._deadline = deadline
            try:
                return self._send(conn, rows)
            finally:
                with self._lock:
                    self._deadline = None

    def _refuse(self, refused: list[tuple[UsageRecord, str]]) -> None:
        """Records the database will not take: spilled, counted, and said in health."""
        why = refused[-1][1]
        records = [record for record, _ in refused]
        for record, reason in refused:
            log.error("USAGE RECORD REFUSED: call %s: %s", record.id, reason)
        if self._pending is None:  # the import's store: they are still in its files
            where = "the files being imported"
        else:
            try:
                where, _ = spill.spill(pending.encodable(records))
            except OSError as exc:
                where = f"nowhere (standard error refused them too: {exc})"
        log.error(
            "USAGE RECORDS SPILLED: PostgreSQL at %s refused %d records (%s); they are in %s. "
            "Once the cause is fixed, import them with: %s",
            self.address,
            len(records),
            why,
            where,
            self._import_command(where),
        )
        with self._lock:
            self._refused += len(records)
            self._refused_why = why
            self._refused_where = where
            self._refused_at = time.monotonic()

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
            if self._pending is not None:  # each was added to the file before it was sent
                self._journaled = min(self._journaled + len(batch), len(self._queue.pending))
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

    def flush_now(self) -> None:
        """flush(), off the event loop (the import)."""
        self._queue.flush().result()

    def known(self, ids: list[str]) -> set[str]:
        """Which of these record ids are stored (the import), on the caller's thread."""

        def run(cur: psycopg.Cursor[Any]) -> set[str]:
            cur.execute(sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(USAGE), (ids,))
            return {found for (found,) in cur.fetchall()}

        return self._on_pool(run)

    def refused(self) -> tuple[int, str | None]:
        """How many records the database refused since the store opened, and the last why."""
        with self._lock:
            return self._refused, self._refused_why

    # -- reading ---------------------------------------------------------------------------------

    async def _read(self, work: Callable[[psycopg.Cursor[Any]], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._on_pool, work)

    def _on_pool(self, work: Callable[[psycopg.Cursor[Any]], T]) -> T:
        if self._watch.error is not None:
            # Known to be away: say so now, rather than after the pool's wait for a connection.
            raise StoreUnavailable(self._watch.error)
        try:
            with (
                self._pool.connection() as conn,
                database.bounded(conn, self.params) as deadline,
                conn.cursor() as cur,
            ):
                with self._lock:
                    self._reading.add(deadline)
                try:
                    return work(cur)
                finally:
                    with self._lock:
                        self._reading.discard(deadline)
        except DatabaseUnavailable as exc:  # past its deadline: the pool drops the connection
            raise StoreUnavailable(str(exc)) from None
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
        now = time.monotonic()
        with self._lock:
            pending_ = waiting + self._committing
            since = self._queue.since
            refused, why, where = self._refused, self._refused_why, self._refused_where
            refused_at = self._refused_at
        problems: list[str] = []
        error = self._write_error or self._watch.error
        if error:
            problems.append(error)
        stalled = now - max(self._written_at, since)
        if pending_ and stalled >= STALL_SECONDS and not error:
            problems.append(
                f"no write to PostgreSQL at {self.address} has completed for {stalled:.0f} s; "
                f"{pending_} usage records wait"
            )
        if stopped:
            problems.append(
                "the usage writer stopped unexpectedly (see the log); restart the gateway"
            )
        if refused and now - refused_at < REFUSED_NOTICE:
            problems.append(
                f"PostgreSQL refused {refused} usage records since start ({why}); they were "
                f"spilled to {where}: import them with `python -m ollama_host import-spill` "
                "once the cause is fixed"
            )
        if dropped:
            problems.append(dropped)
        return StoreHealth(
            status="degraded" if problems else "ok",
            path=f"postgresql://{self.address}",
            pending=pending_,
            error="; ".join(problems) or None,
            dropped=self._queue.dropped,
        )

    def close(self) -> None:
        """Write what waits, for at most CLOSE_WAIT (an operation running then is cut short at
        its end), spill what is left, and release the connections."""
        close_by = time.monotonic() + CLOSE_WAIT
        with self._lock:
            if self._close_by is None:
                self._close_by = close_by
            running = [*self._reading, *([self._deadline] if self._deadline else [])]
        for deadline in running:
            database.WATCHDOG.shorten(deadline, close_by)
        if not self._queue.close():
            return
        self._watch.stop()
        self._reader.shutdown(wait=True)
        self._pool.close(timeout=1.0)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)
