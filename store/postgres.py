"""The usage store in PostgreSQL: one log that several gateways write and read.

append() only queues a record. A writer thread takes whatever has queued up (waiting
GROUP_COMMIT for more after the first) and sends it as one binary COPY, then moves the
shared change counter, in one transaction: that is when a record is safe. A batch the
database saw already (its commit was lost with the connection) would break the primary key:
that batch is sent again through a staging table with ON CONFLICT DO NOTHING, so a record is
stored once however often it is sent.

While the database cannot be reached, records wait in memory (at most MAX_PENDING), health
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
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import psycopg
import psycopg_pool
from psycopg import sql

from . import pg
from .base import StoreError, StoreHealth, export_pages
from .pg import SCHEMA, DatabaseUnavailable
from .records import Bucket, GroupStats, Stats, Totals, UsageQuery, UsageRecord, iso
from .stats import ZERO, hist_percentile

log = logging.getLogger("ollama_host.store")
T = TypeVar("T")

GROUP_COMMIT = 0.01
# Records per COPY: big enough to amortize a transaction, small enough that a batch the
# database refuses costs little to send again.
MAX_BATCH = 5000
MAX_PENDING = 100_000
RETRY_SECONDS = 1.0
# How often each gateway reads the shared change counter: a dashboard sees another
# gateway's calls at most this much later (its own at once).
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

# Column, SQL type for COPY, and how a record fills it (the record itself is `doc`).
_TEXT = "text"
COLUMNS: list[tuple[str, str, Callable[[UsageRecord], Any]]] = [
    ("id", _TEXT, lambda r: r.id),
    ("date", "timestamptz", lambda r: _moment(r.date)),
    ("model_name", _TEXT, lambda r: _text(r.model_name)),
    ("project", _TEXT, lambda r: _text(r.project)),
    ("process_id", _TEXT, lambda r: _text(r.process_id)),
    ("subprocess_id", _TEXT, lambda r: _text(r.subprocess_id)),
    ("status", _TEXT, lambda r: r.status),
    ("input_tokens", "int8", lambda r: r.input_tokens),
    ("output_tokens", "int8", lambda r: r.output_tokens),
    ("total_seconds", "float8", lambda r: r.total_seconds),
    ("ttft_seconds", "float8", lambda r: r.ttft_seconds),
    ("eval_seconds", "float8", lambda r: r.eval_seconds),
    ("upstream_seconds", "float8", lambda r: r.upstream_seconds),
    ("tokens_estimated", "bool", lambda r: r.tokens_estimated),
    ("key_id", _TEXT, lambda r: _text(r.key_id)),
    ("user", _TEXT, lambda r: _text(r.user)),
    ("front", _TEXT, lambda r: _text(r.front)),
    ("endpoint", _TEXT, lambda r: _text(r.endpoint)),
    ("upstream", _TEXT, lambda r: _text(r.upstream)),
]
_COLUMN_LIST = sql.SQL(", ").join(sql.Identifier(name) for name, _, _ in [*COLUMNS, ("doc", "", 0)])
# The record goes as its JSON text: in binary COPY a json value is sent as its text.
_COPY_TYPES = [kind for _, kind, _ in COLUMNS] + [_TEXT]

# The equality filters: UsageQuery field -> column. A filter added to UsageQuery is one line
# here; one listed here that UsageQuery does not have (yet) is skipped.
FILTERS: list[tuple[str, str]] = [
    ("project", "project"),
    ("process_id", "process_id"),
    ("subprocess_id", "subprocess_id"),
    ("model", "model_name"),
    ("status", "status"),
    ("front", "front"),
    ("endpoint", "endpoint"),
    ("upstream", "upstream"),
]
FILTERS = [f for f in FILTERS if f[0] in {f.name for f in msgspec.structs.fields(UsageQuery)}]

# The stats breakdowns: Stats field -> the columns it groups by. The key a row shows is
# made as store.stats makes it (None as "-", several columns joined by "/"). A breakdown
# added to Stats is one line here; one listed here that Stats does not have (yet) is skipped.
BREAKDOWNS: list[tuple[str, tuple[str, ...]]] = [
    ("by_model", ("model_name",)),
    ("by_project", ("project",)),
    ("by_process", ("process_id", "subprocess_id")),
    ("by_front", ("front",)),
    ("by_endpoint", ("endpoint",)),
    ("by_upstream", ("upstream",)),
]
BREAKDOWNS = [b for b in BREAKDOWNS if b[0] in {f.name for f in msgspec.structs.fields(Stats)}]


def _moment(date: str) -> datetime:
    moment = datetime.fromisoformat(date)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; the record in `doc` keeps the value exactly.
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


class StoreUnavailable(StoreError):
    """A read could not reach the database; the message says where and why."""


class PostgresStore:
    """Usage records in a PostgreSQL database (a `store.base.UsageStore`)."""

    def __init__(self, dsn: str, *, retention_days: float | None = None) -> None:
        self.params = pg.parse(dsn)
        self.address = pg.where(self.params)
        pg.migrate(self.params)
        self._conn: psycopg.Connection[Any] | None = pg.connect(self.params, purpose="writer")
        self.retention_days = retention_days
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[UsageRecord] = []
        self._pending_since = 0.0
        self._committing = 0
        self._flushes: list[Future[None]] = []
        self._closing = False
        self._stopped = False
        self._dropped = 0
        self._write_error: str | None = None
        self._retry_at = 0.0
        self._retention_at = 0.0
        self._changes = 0
        self.instance = ""
        self._watch = pg.Watch(
            self.params,
            sql.SQL("SELECT usage_changes, instance FROM {}").format(STATE),
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
        self._writer = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._writer.start()
        self._watch.start()

    # -- the change counter ----------------------------------------------------------------------

    def _seen(self, row: tuple[Any, ...]) -> bool:
        self._moved(int(row[0]))
        self.instance = str(row[1])
        return True

    def _moved(self, value: int) -> None:
        with self._lock:
            self._changes = max(self._changes, value)

    @property
    def changes(self) -> int:
        return self._changes

    # -- writing ---------------------------------------------------------------------------------

    def append(self, record: UsageRecord) -> None:
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 1000 == 0:
                    log.error(
                        "USAGE RECORDS DROPPED: %d records wait for the database already; "
                        "%d dropped so far",
                        MAX_PENDING,
                        self._dropped,
                    )
                return
            self._pending.append(record)
            if len(self._pending) == 1:
                self._pending_since = time.monotonic()
                self._wake.notify()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._lock:
                self._stopped = True
                flushes, self._flushes = self._flushes, []
            for flushed in flushes:
                flushed.set_result(None)
            if self._conn is not None:
                self._conn.close()

    def _loop(self) -> None:
        closing_since: float | None = None
        while True:
            with self._wake:
                while True:
                    now = time.monotonic()
                    if self._closing or self._flushes:
                        break
                    if self._pending and now >= max(
                        self._retry_at, self._pending_since + GROUP_COMMIT
                    ):
                        break
                    due = now + 3600.0
                    if self._pending:
                        due = max(self._retry_at, self._pending_since + GROUP_COMMIT)
                    if self.retention_days is not None:
                        due = min(due, self._retention_at)
                    if due <= now:
                        break
                    self._wake.wait(due - now)
                closing = self._closing
                ready = now >= self._retry_at or closing or self._flushes
                batch = self._pending[:MAX_BATCH] if ready else []
                if batch:
                    del self._pending[:MAX_BATCH]
                    self._committing = len(batch)
            written = self._write(batch) if batch else True
            if self.retention_days is not None and time.monotonic() >= self._retention_at:
                self._retention_at = time.monotonic() + RETENTION_EVERY
                self._apply_retention()
            with self._lock:
                done = not self._pending or not written
                flushes = self._flushes if done else []
                if done:
                    self._flushes = []
                left = len(self._pending)
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

    def _rows(self, batch: list[UsageRecord]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for record in batch:
            try:
                doc = _encode(record).decode()
                rows.append((*(fill(record) for _, _, fill in COLUMNS), doc))
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
                self._conn = pg.connect(self.params, purpose="writer")
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
                    log.error("USAGE RECORD DROPPED: call %s was refused: %s", row[0], bad)
        self._moved(moved)
        with self._lock:
            self._committing = 0
        if self._write_error:
            log.warning("PostgreSQL at %s takes usage records again", self.address)
            self._write_error = None
        return True

    def _send(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> int:
        """One transaction: the rows, then the change counter; returns the counter."""
        with conn.transaction(), conn.cursor() as cur:
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
                    sql.SQL("INSERT INTO {} SELECT * FROM {} ON CONFLICT (id) DO NOTHING").format(
                        USAGE, staging
                    )
                )
            cur.execute(
                sql.SQL(
                    "UPDATE {} SET usage_changes = usage_changes + %s RETURNING usage_changes"
                ).format(STATE),
                (len(rows),),
            )
            found = cur.fetchone()
        return int(found[0]) if found else 0

    @staticmethod
    def _copy(cur: psycopg.Cursor[Any], table: sql.Identifier, rows: list[tuple[Any, ...]]) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, _COLUMN_LIST)
        with cur.copy(statement) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)

    def _failed(self, batch: list[UsageRecord], exc: psycopg.Error | DatabaseUnavailable) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._lock:
            self._pending[:0] = batch
            over = len(self._pending) - MAX_PENDING
            if over > 0:  # appends arrived meanwhile: keep the oldest, as append() does
                del self._pending[MAX_PENDING:]
                self._dropped += over
            self._committing = 0
        self._retry_at = time.monotonic() + RETRY_SECONDS
        error = str(exc) if isinstance(exc, StoreError) else pg.unreachable(self.params, exc)
        if error != self._write_error:
            log.error("%s; %d usage records wait in memory and will be retried", error, len(batch))
        self._write_error = error

    def _apply_retention(self) -> None:
        assert self.retention_days is not None
        cutoff = datetime.now(UTC) - timedelta(days=self.retention_days)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = pg.connect(self.params, purpose="writer")
            with self._conn.transaction(), self._conn.cursor() as cur:
                cur.execute(sql.SQL("DELETE FROM {} WHERE date < %s").format(USAGE), (cutoff,))
                removed = cur.rowcount
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
        done: Future[None] = Future()
        with self._wake:
            if self._stopped:
                return
            self._flushes.append(done)
            self._wake.notify()
        await asyncio.wrap_future(done)

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
                pg.unreachable(self.params, exc)
                if isinstance(exc, psycopg.Error)
                else f"cannot reach PostgreSQL at {self.address}: no connection within "
                f"{self._pool.timeout:g} s"
            )
            raise StoreUnavailable(reason) from None

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        where, params = _where(q, paging=True)
        statement = sql.SQL(
            "SELECT doc::text FROM {} {} ORDER BY id DESC LIMIT %s OFFSET %s"
        ).format(USAGE, where)
        arguments = [*params, q.limit, min(q.offset, MAX_OFFSET)]

        def run(cur: psycopg.Cursor[Any]) -> list[UsageRecord]:
            cur.execute(statement, arguments)
            return [_decode(doc) for (doc,) in cur.fetchall()]

        return await self._read(run)

    async def stats(self, q: UsageQuery, *, bucket_seconds: int) -> Stats:
        where, params = _where(q, paging=False)
        return await self._read(lambda cur: _stats(cur, where, params, bucket_seconds))

    def export(self, q: UsageQuery) -> AsyncIterator[list[UsageRecord]]:
        return export_pages(self, q)

    # -- state -----------------------------------------------------------------------------------

    def health(self) -> StoreHealth:
        with self._lock:
            pending = len(self._pending) + self._committing
            dropped = self._dropped
            stopped = self._stopped and not self._closing
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
        with self._wake:
            if self._closing:
                return
            self._closing = True
            self._wake.notify()
        self._writer.join()
        self._watch.stop()
        self._reader.shutdown(wait=True)
        self._pool.close()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)


def _where(q: UsageQuery, *, paging: bool) -> tuple[sql.Composable, list[Any]]:
    """The WHERE clause of q's filters, and its parameters: values never enter the SQL."""
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for field, column in FILTERS:
        value = getattr(q, field)
        if value is not None:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(_text(value))
    if q.since is not None:
        clauses.append(sql.SQL("date >= %s"))
        params.append(q.since)
    if q.until is not None:
        clauses.append(sql.SQL("date < %s"))
        params.append(q.until)
    if paging and q.before is not None:
        clauses.append(sql.SQL("id < %s"))
        params.append(_text(q.before))
    if paging and q.after is not None:
        clauses.append(sql.SQL("id > %s"))
        params.append(_text(q.after))
    if not clauses:
        return sql.SQL(""), params
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses), params


# -- stats -------------------------------------------------------------------------------------

# Percentiles come from the same logarithmic histogram as store.stats (buckets 10% wide),
# computed by the database with the same formula, so both stores report the same figures.
_HIST = """CASE WHEN coalesce({0}, 0) <= 1e-6 THEN {1}
    ELSE floor(ln({0}) / ln(1.1::float8))::int END"""
_EVAL = "eval_seconds <> 0 AND output_tokens <> 0 AND NOT tokens_estimated"


def _series(
    cur: psycopg.Cursor[Any], where: sql.Composable, params: list[Any], bucket: int
) -> tuple[Totals, list[Bucket]]:
    cur.execute(
        sql.SQL(
            """SELECT extract(epoch FROM start)::bigint, calls, input, output, model, errors,
                cancelled
            FROM (SELECT date_bin(make_interval(secs => %s), date,
                        timestamptz '1970-01-01 00:00:00+00') AS start,
                    count(*) AS calls, sum(coalesce(input_tokens, 0)) AS input,
                    sum(coalesce(output_tokens, 0)) AS output,
                    sum(coalesce(upstream_seconds, 0)) AS model,
                    count(*) FILTER (WHERE status = 'error') AS errors,
                    count(*) FILTER (WHERE status = 'cancelled') AS cancelled
                FROM {} {} GROUP BY 1) AS buckets
            ORDER BY 1"""
        ).format(USAGE, where),
        [bucket, *params],
    )
    totals = Totals()
    series: list[Bucket] = []
    model_seconds = 0.0
    for start, calls, input_, output, model, errors, cancelled in cur.fetchall():
        totals.calls += calls
        totals.input_tokens += int(input_)
        totals.output_tokens += int(output)
        model_seconds += model
        totals.errors += errors
        totals.cancelled += cancelled
        series.append(
            Bucket(
                start=iso(datetime.fromtimestamp(start, UTC)),
                calls=calls,
                input_tokens=int(input_),
                output_tokens=int(output),
            )
        )
    totals.model_seconds = round(model_seconds, 6)
    return totals, series


class _Group:
    __slots__ = ("calls", "errors", "eval_s", "eval_t", "input", "model", "output", "seconds")

    def __init__(self) -> None:
        self.calls = self.errors = self.input = self.output = self.eval_t = 0
        self.seconds = self.model = self.eval_s = 0.0


def _key(values: Iterable[str | None]) -> str:
    return "/".join(v or "-" for v in values)


def _stats(
    cur: psycopg.Cursor[Any], where: sql.Composable, params: list[Any], bucket: int
) -> Stats:
    totals, series = _series(cur, where, params, bucket)
    # One scan, every breakdown: for each, its sums, and its two histograms.
    columns = sorted({c for _, cols in BREAKDOWNS for c in cols})
    sets: list[sql.Composable] = []
    for _, cols in BREAKDOWNS:
        ids = [sql.Identifier(c) for c in cols]
        for extra in ([], [sql.Identifier("sb")], [sql.Identifier("tb")]):
            sets.append(sql.SQL("({})").format(sql.SQL(", ").join([*ids, *extra])))
    grouped = [sql.Identifier(c) for c in columns]
    cur.execute(
        sql.SQL(
            """SELECT GROUPING({cols}, sb, tb), {cols}, sb, tb, count(*),
                count(*) FILTER (WHERE status = 'error'),
                sum(coalesce(input_tokens, 0)), sum(coalesce(output_tokens, 0)),
                sum(coalesce(total_seconds, 0)), sum(coalesce(upstream_seconds, 0)),
                coalesce(sum(eval_seconds) FILTER (WHERE {ev}), 0),
                coalesce(sum(output_tokens) FILTER (WHERE {ev}), 0)
            FROM (SELECT *, {sb} AS sb, {tb} AS tb FROM {usage} {where}) AS measured
            GROUP BY GROUPING SETS ({sets})"""
        ).format(
            cols=sql.SQL(", ").join(grouped),
            ev=sql.SQL(_EVAL),
            sb=sql.SQL(_HIST.format("total_seconds", ZERO)),
            tb=sql.SQL(
                "CASE WHEN ttft_seconds IS NULL THEN NULL ELSE "
                + _HIST.format("ttft_seconds", ZERO)
                + " END"
            ),
            usage=USAGE,
            where=where,
            sets=sql.SQL(", ").join(sets),
        ),
        params,
    )
    width = len(columns) + 2
    groups: dict[str, dict[str, _Group]] = {name: {} for name, _ in BREAKDOWNS}
    seconds: dict[str, dict[str, dict[int, int]]] = {name: {} for name, _ in BREAKDOWNS}
    ttft: dict[str, dict[str, dict[int, int]]] = {name: {} for name, _ in BREAKDOWNS}
    for row in cur.fetchall():
        mask = row[0]
        values = dict(zip(columns, row[1 : 1 + len(columns)], strict=True))
        sb, tb = row[1 + len(columns)], row[2 + len(columns)]
        calls, errors, input_, output, total, model, eval_s, eval_t = row[1 + width :]
        # GROUPING() sets a bit for each column NOT grouped, the last argument lowest.
        grouped_by = {
            c for i, c in enumerate([*columns, "sb", "tb"]) if not mask & (1 << (width - 1 - i))
        }
        for name, cols in BREAKDOWNS:
            rest = grouped_by - set(cols)
            if not set(cols) <= grouped_by or rest - {"sb", "tb"}:
                continue
            key = _key(values[c] for c in cols)
            if rest == {"sb"}:
                hist = seconds[name].setdefault(key, {})
                hist[sb] = hist.get(sb, 0) + calls
            elif rest == {"tb"}:
                if tb is not None:
                    hist = ttft[name].setdefault(key, {})
                    hist[tb] = hist.get(tb, 0) + calls
            elif not rest:
                group = groups[name].setdefault(key, _Group())
                group.calls += calls
                group.errors += errors
                group.input += int(input_)
                group.output += int(output)
                group.seconds += total
                group.model += model
                group.eval_s += eval_s
                group.eval_t += int(eval_t)
            break
    breakdowns: dict[str, list[GroupStats]] = {}
    for name, _ in BREAKDOWNS:
        rows = [
            GroupStats(
                key=key,
                calls=g.calls,
                input_tokens=g.input,
                output_tokens=g.output,
                total_seconds=round(g.seconds, 6),
                model_seconds=round(g.model, 6),
                errors=g.errors,
                p50_seconds=hist_percentile(seconds[name].get(key, {}), 0.50),
                p95_seconds=hist_percentile(seconds[name].get(key, {}), 0.95),
                p50_ttft_seconds=hist_percentile(ttft[name].get(key, {}), 0.50),
                tokens_per_second=round(g.eval_t / g.eval_s, 3) if g.eval_s else None,
            )
            for key, g in groups[name].items()
        ]
        breakdowns[name] = sorted(rows, key=lambda row: (-row.calls, row.key))
    fields: dict[str, Any] = {"totals": totals, "bucket_seconds": bucket, "series": series}
    return Stats(**fields, **dict[str, Any](breakdowns))
