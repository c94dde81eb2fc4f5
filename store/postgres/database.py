"""PostgreSQL plumbing shared by the usage store and the key ring: connecting with a clear
error, the address without its password, the versioned schema, and watching a counter.

Everything the gateway keeps lives in one schema of its own, `ollama_host`, marked as ours
by a comment when migration 1 makes it. Nothing outside that schema is ever read or changed,
and a schema of that name that someone else made is refused, never altered.

Migrations are numbered and applied in order at start, in one transaction that first takes
a transaction-scoped advisory lock: two gateways starting at once against an empty database
take turns, and the second finds the work done. A database whose schema is newer than this
code knows is refused, since the code cannot know what the newer version changed.

Requires the `postgres` extra (psycopg 3).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..base import StoreError

log = logging.getLogger("ollama_host.store")

SCHEMA = "ollama_host"
# What migration 1 writes on the schema; a schema without it is not ours.
MARKER = "Ollama Host: usage records, API keys and secrets"
# Any constant works, as long as every gateway uses the same one: "ollamaho" in ASCII.
MIGRATION_LOCK = 0x6F6C6C616D61686F
CONNECT_TIMEOUT = "5"
# A database can hold a connection open and answer nothing (a hung server, a proxy or
# firewall that keeps the socket and drops the traffic). Every connection is bounded three
# ways: libpq's connect_timeout (the whole start, login included); TCP keepalives and
# tcp_user_timeout, which notice a peer that is gone (a host that died, a cable); and, for
# a peer that is there and silent, which TCP cannot tell from a slow one, a deadline on each
# operation (`bounded`, below), whose watchdog shuts the socket when it passes. The server's
# own statement_timeout ends a statement stuck in the server (a lock) a little before that.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",  # milliseconds
}
# The longest any one operation may take (a COPY of a batch, a stats query, a poll): far
# past what each takes on a healthy server (milliseconds; a stats query over a year of
# rollups, a second or two).
OPERATION_SECONDS = 30.0
STATEMENT_TIMEOUT_MS = int(OPERATION_SECONDS * 1000) - 2000
# A watch's read of its one row: a server that takes this long is as good as away.
POLL_SECONDS = 5.0
# How long a stop waits for a watch's poll to end.
STOP_WAIT = 1.0

Params = dict[str, Any]


class DatabaseUnavailable(StoreError):
    """The database cannot be reached (or refused the login); the message names the host."""


class SchemaError(StoreError):
    """The database holds a schema this gateway must not use or change."""


def parse(dsn: str) -> Params:
    """The connection parameters of a `postgresql://` URL or a `key=value` string.

    libpq's own parse errors may quote the address, password included: never shown.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise StoreError(
            "--store is not a PostgreSQL address psycopg can read; write it as "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    for name, value in KEEPALIVES.items():
        params.setdefault(name, value)
    options = str(params.get("options") or "")
    if "statement_timeout" not in options:
        params["options"] = f"{options} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()
    return params


def where(params: Params) -> str:
    """The address for messages and logs: user, host, port and database; never a password."""
    host = str(params.get("host") or params.get("hostaddr") or "the local socket")
    port = params.get("port")
    user = params.get("user")
    dbname = params.get("dbname")
    place = f"{host}:{port}" if port else host
    if dbname:
        place += f"/{dbname}"
    return f"{user}@{place}" if user else place


def redacted(dsn: str) -> str:
    """The address without its password, to show."""
    return "postgresql://" + where(parse(dsn))


def _reason(exc: psycopg.Error) -> str:
    """libpq's words, on one line, without the prefix psycopg adds."""
    text = " ".join(str(exc).split())
    return text.removeprefix("connection failed: ") or type(exc).__name__


def connect(
    params: Params, *, purpose: str, autocommit: bool = False, timeout: float | None = None
) -> psycopg.Connection[Any]:
    """A connection, or DatabaseUnavailable naming the host and libpq's reason; `timeout`
    shortens the connect timeout (to what is left of a stop's wait)."""
    if timeout is not None:
        seconds = min(float(params.get("connect_timeout") or CONNECT_TIMEOUT), timeout)
        # libpq takes whole seconds, and 0 means forever.
        params = {**params, "connect_timeout": str(max(1, int(seconds)))}
    try:
        return psycopg.connect(
            **params, autocommit=autocommit, application_name=f"ollama-host {purpose}"
        )
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {where(params)}: {_reason(exc)}"
        ) from None


def unreachable(params: Params, exc: psycopg.Error) -> str:
    """What health and the log say when a working connection failed."""
    return f"cannot reach PostgreSQL at {where(params)}: {_reason(exc)}"


# -- a bound on every operation ------------------------------------------------------------------


class TimedOut(DatabaseUnavailable):
    """An operation passed its deadline: the database holds the connection and answers nothing
    (or too slowly). The connection was shut; the message names the host and the bound."""


class Deadline:
    """One operation's deadline on one connection, armed in the watchdog (see `bounded`)."""

    def __init__(self, conn: psycopg.Connection[Any], at: float) -> None:
        self.conn = conn
        self.at = at
        self.fired = False
        self.armed = True

    def __lt__(self, other: Deadline) -> bool:
        return self.at < other.at


class Watchdog:
    """One thread for every deadline of the process: when one passes while its operation is
    still running, the connection's socket is shut, so the call blocked on it in libpq
    returns at once with an error (psycopg has no timeout of its own for a sync operation,
    and a cancel request would go to the same silent server)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[Deadline] = []
        self._thread: threading.Thread | None = None

    def arm(self, conn: psycopg.Connection[Any], seconds: float) -> Deadline:
        deadline = Deadline(conn, time.monotonic() + seconds)
        with self._cond:
            heapq.heappush(self._heap, deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pg-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return deadline

    def disarm(self, deadline: Deadline) -> None:
        with self._cond:
            deadline.armed = False

    def shorten(self, deadline: Deadline, at: float) -> None:
        """Bring a deadline forward (a stop that cannot wait as long)."""
        with self._cond:
            if deadline.armed and at < deadline.at:
                deadline.at = at
                heapq.heapify(self._heap)
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and not self._heap[0].armed:
                    heapq.heappop(self._heap)
                now = time.monotonic()
                if self._heap and self._heap[0].at <= now:
                    deadline = heapq.heappop(self._heap)
                    # Under the lock: a disarmed deadline's connection may be closed, its
                    # descriptor reused; an armed one's is still the connection's.
                    deadline.fired = True
                    _shut(deadline.conn)
                    continue
                self._cond.wait(self._heap[0].at - now if self._heap else None)


def _shut(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(OSError, psycopg.Error):
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = Watchdog()


@contextlib.contextmanager
def bounded(
    conn: psycopg.Connection[Any], params: Params, seconds: float | None = None
) -> Iterator[Deadline]:
    """Run one operation on `conn` within `seconds` (OPERATION_SECONDS by default); past that
    its socket is shut and the operation fails with TimedOut. The connection is then broken:
    close it (a pool discards it on its own)."""
    limit = OPERATION_SECONDS if seconds is None else seconds
    deadline = WATCHDOG.arm(conn, max(limit, 0.0))
    try:
        yield deadline
    except psycopg.Error:
        if deadline.fired:
            raise TimedOut(
                f"PostgreSQL at {where(params)} did not answer within {limit:g} s"
            ) from None
        raise
    finally:
        WATCHDOG.disarm(deadline)


# -- the schema --------------------------------------------------------------------------------

# Each entry is one version: never edit one that was released, add the next instead.
MIGRATIONS: list[str] = [
    # 1: the schema, its bookkeeping, the usage log and its sums, keys and secrets.
    """
    CREATE SCHEMA ollama_host;
    COMMENT ON SCHEMA ollama_host IS 'Ollama Host: usage records, API keys and secrets';
    CREATE TABLE ollama_host.migrations (
        version integer PRIMARY KEY,
        applied timestamptz NOT NULL DEFAULT now()
    );
    -- One row: counters every gateway polls, each moved in the transaction that changes
    -- what it counts, so a reader never sees the count before the rows.
    CREATE TABLE ollama_host.state (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        instance text NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),
        usage_changes bigint NOT NULL DEFAULT 0,
        keys_version bigint NOT NULL DEFAULT 0
    );
    INSERT INTO ollama_host.state DEFAULT VALUES;
    -- A usage record: the columns the dashboard filters, sorts and sums by, and the whole
    -- record as the gateway wrote it (json keeps its text as it is, and accepts the
    -- \\u0000 escape that jsonb refuses).
    CREATE TABLE ollama_host.usage (
        id text PRIMARY KEY,
        date timestamptz NOT NULL,
        model_name text NOT NULL,
        project text,
        process_id text,
        subprocess_id text,
        status text NOT NULL,
        input_tokens bigint,
        output_tokens bigint,
        total_seconds double precision,
        ttft_seconds double precision,
        eval_seconds double precision,
        upstream_seconds double precision,
        tokens_estimated boolean NOT NULL DEFAULT false,
        key_id text,
        "user" text,
        front text,
        endpoint text,
        upstream text,
        doc json NOT NULL
    );
    -- Newest first for a rare project or process; a common value (a model, a status) is
    -- found soon enough walking the primary key backwards, and each index costs every write.
    CREATE INDEX usage_project ON ollama_host.usage (project, id);
    CREATE INDEX usage_process ON ollama_host.usage (process_id, id);
    CREATE INDEX usage_date ON ollama_host.usage (date);
    -- Sums and histograms kept as records arrive, so that stats need not read every record
    -- (store/postgres/rollups.py): per UTC hour, and histograms per UTC day too, for each
    -- combination of the dimensions the dashboard filters and groups by.
    CREATE TABLE ollama_host.usage_hourly (
        hour timestamptz NOT NULL,
        model_name text NOT NULL,
        project text,
        process_id text,
        subprocess_id text,
        status text NOT NULL,
        front text,
        endpoint text,
        upstream text,
        calls bigint NOT NULL,
        input_tokens bigint NOT NULL,
        output_tokens bigint NOT NULL,
        total_seconds double precision NOT NULL,
        upstream_seconds double precision NOT NULL,
        eval_seconds double precision NOT NULL,
        eval_tokens bigint NOT NULL,
        -- {"bucket": count}: store.stats' logarithmic buckets of total and first-token time
        seconds_hist jsonb NOT NULL,
        ttft_hist jsonb NOT NULL,
        UNIQUE NULLS NOT DISTINCT (hour, model_name, project, process_id, subprocess_id,
            status, front, endpoint, upstream)
    );
    CREATE TABLE ollama_host.usage_daily_hist (
        day timestamptz NOT NULL,
        model_name text NOT NULL,
        project text,
        process_id text,
        subprocess_id text,
        status text NOT NULL,
        front text,
        endpoint text,
        upstream text,
        -- {"bucket": count}: store.stats' logarithmic buckets of total and first-token time
        seconds_hist jsonb NOT NULL,
        ttft_hist jsonb NOT NULL,
        UNIQUE NULLS NOT DISTINCT (day, model_name, project, process_id, subprocess_id,
            status, front, endpoint, upstream)
    );
    CREATE FUNCTION ollama_host.hist_add(a jsonb, b jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE AS $$
        SELECT coalesce(jsonb_object_agg(k, n), '{}'::jsonb)
        FROM (SELECT k, sum(v::bigint) AS n
              FROM (SELECT * FROM jsonb_each_text(a) UNION ALL
                    SELECT * FROM jsonb_each_text(b)) AS e (k, v)
              GROUP BY k HAVING sum(v::bigint) <> 0) AS s
    $$;
    -- API keys, as the gateway's ApiKey documents: a field added to ApiKey needs no migration.
    CREATE TABLE ollama_host.keys (
        id text PRIMARY KEY,
        doc json NOT NULL
    );
    -- The fingerprint secret and the admin token's hash.
    CREATE TABLE ollama_host.secrets (
        name text PRIMARY KEY,
        value text NOT NULL,
        created timestamptz NOT NULL DEFAULT now()
    );
    """,
    # 2: GPU time. Each record's GPU-seconds, the part that was model loading, its cost, and
    # its key's label, as columns the sums read; the hourly sums gain the GPU figures, and
    # both rollups the key's label as a dimension (the dashboard's breakdown by key). Rows
    # written before hold none of these (no record had GPU time; their key shows as "-").
    """
    ALTER TABLE ollama_host.usage
        ADD COLUMN key_label text,
        ADD COLUMN gpu_seconds double precision,
        ADD COLUMN gpu_load_seconds double precision,
        ADD COLUMN cost double precision;
    ALTER TABLE ollama_host.usage_hourly
        ADD COLUMN key_label text,
        ADD COLUMN gpu_seconds double precision NOT NULL DEFAULT 0,
        ADD COLUMN gpu_load_seconds double precision NOT NULL DEFAULT 0,
        ADD COLUMN cost double precision NOT NULL DEFAULT 0;
    ALTER TABLE ollama_host.usage_daily_hist ADD COLUMN key_label text;
    DO $$
    DECLARE found record;
    BEGIN
        FOR found IN
            SELECT conname, conrelid::regclass AS tab FROM pg_constraint
            WHERE contype = 'u' AND conrelid IN (
                'ollama_host.usage_hourly'::regclass, 'ollama_host.usage_daily_hist'::regclass)
        LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', found.tab, found.conname);
        END LOOP;
    END
    $$;
    ALTER TABLE ollama_host.usage_hourly ADD UNIQUE NULLS NOT DISTINCT (hour, model_name,
        project, process_id, subprocess_id, status, front, endpoint, upstream, key_label);
    ALTER TABLE ollama_host.usage_daily_hist ADD UNIQUE NULLS NOT DISTINCT (day, model_name,
        project, process_id, subprocess_id, status, front, endpoint, upstream, key_label);
    """,
]

LATEST = len(MIGRATIONS)

# The dimensions the rollups keep apart (store/postgres/rollups.py): every column a filter or
# a breakdown may name, in all three usage tables.
DIMS = (
    "model_name",
    "project",
    "process_id",
    "subprocess_id",
    "status",
    "front",
    "endpoint",
    "upstream",
    "key_label",
)
# The hourly rollup's sums (rollups.py adds a record's values to them).
SUMS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "total_seconds",
    "upstream_seconds",
    "eval_seconds",
    "eval_tokens",
    "gpu_seconds",
    "gpu_load_seconds",
    "cost",
)
HOURLY_COLUMNS = ("hour", *DIMS, *SUMS, "seconds_hist", "ttft_hist")
DAILY_COLUMNS = ("day", *DIMS, "seconds_hist", "ttft_hist")

# What the migrations make, as the gateway reads and writes it: checked at every start, so
# that a schema someone changed since (a table dropped or replaced, a column gone) stops the
# start with one line instead of failing record by record. A migration that adds a table or
# a column the gateway needs adds it here too (the usage columns are store.py's COLUMNS).
TABLES: dict[str, frozenset[str]] = {
    "migrations": frozenset({"version", "applied"}),
    "state": frozenset({"one", "instance", "usage_changes", "keys_version"}),
    "usage": frozenset(
        {
            "id",
            "date",
            *DIMS,
            "input_tokens",
            "output_tokens",
            "total_seconds",
            "ttft_seconds",
            "eval_seconds",
            "upstream_seconds",
            "tokens_estimated",
            "key_id",
            "user",
            "gpu_seconds",
            "gpu_load_seconds",
            "cost",
            "doc",
        }
    ),
    "usage_hourly": frozenset(HOURLY_COLUMNS),
    "usage_daily_hist": frozenset(DAILY_COLUMNS),
    "keys": frozenset({"id", "doc"}),
    "secrets": frozenset({"name", "value", "created"}),
}
assert SCHEMA in MIGRATIONS[0]
assert MARKER in MIGRATIONS[0]


def _version(cur: psycopg.Cursor[Any], place: str) -> int:
    """The schema's version: 0 when there is no schema yet. SchemaError if it is not ours."""
    cur.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
        (SCHEMA,),
    )
    found = cur.fetchone()
    if found is None:
        return 0
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.migrations",))
    has_migrations = cur.fetchone()
    if found[0] != MARKER or not has_migrations or not has_migrations[0]:
        cur.execute(
            "SELECT string_agg(tablename, ', ' ORDER BY tablename) FROM pg_tables "
            "WHERE schemaname = %s",
            (SCHEMA,),
        )
        row = cur.fetchone()
        tables = row[0] if row and row[0] else "none"
        raise SchemaError(
            f"the database {place} has a schema {SCHEMA!r} that Ollama Host did not make "
            f"(its tables: {tables}). Refusing to use or change it: point --store at a "
            "database of its own"
        )
    cur.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}.migrations").format(
            sql.Identifier(SCHEMA)
        )
    )
    row = cur.fetchone()
    return int(row[0]) if row else 0


def _check(cur: psycopg.Cursor[Any], place: str) -> None:
    """SchemaError, in one line, if the schema lacks what the migrations made (TABLES)."""
    cur.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s",
        (SCHEMA,),
    )
    found: dict[str, set[str]] = {}
    for table, column in cur.fetchall():
        found.setdefault(str(table), set()).add(str(column))
    wrong: list[str] = []
    for table, columns in TABLES.items():
        if table not in found:
            wrong.append(f"no table {table}")
        elif missing := sorted(columns - found[table]):
            wrong.append(f"{table} lacks {', '.join(missing)}")
    if not wrong:  # the state table among what is there
        cur.execute(sql.SQL("SELECT count(*) FROM {}.state").format(sql.Identifier(SCHEMA)))
        rows = cur.fetchone()
        if not rows or rows[0] != 1:
            wrong.append("its state table does not hold its one row")
    if wrong:
        raise SchemaError(
            f"the database {place} holds the gateway's schema {SCHEMA!r}, but not as its "
            f"migrations made it ({'; '.join(wrong)}): something changed it since. Restore it "
            "from a backup, or point --store at a database of its own"
        )


def migrate(params: Params) -> int:
    """Bring the schema to LATEST (under the advisory lock); returns the version found."""
    place = where(params)
    with connect(params, purpose="migrations") as conn:
        try:
            with bounded(conn, params), conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                found = _version(cur, place)
                if found > LATEST:
                    raise SchemaError(
                        f"the database {place} holds schema version {found}, newer than this "
                        f"gateway knows (up to {LATEST}): a newer Ollama Host uses it. Upgrade "
                        "this gateway, or point --store at another database"
                    )
                for version in range(found + 1, LATEST + 1):
                    cur.execute(MIGRATIONS[version - 1].encode())
                    cur.execute(
                        sql.SQL("INSERT INTO {}.migrations (version) VALUES (%s)").format(
                            sql.Identifier(SCHEMA)
                        ),
                        (version,),
                    )
                    log.info("database %s: applied schema migration %d", place, version)
                _check(cur, place)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SchemaError(
                f"the database {place} refused to make the gateway's schema: {_reason(exc)}; "
                "grant the user CREATE on the database, or make the schema as its owner"
            ) from None
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(unreachable(params, exc)) from None
    return found


# -- watching a counter ------------------------------------------------------------------------


class Watch:
    """A thread that reads one row every `every` seconds and calls `changed` when it differs
    (again at the next read, if `changed` returns False: it could not act on it).

    The cheap way for every gateway to notice what the others did: one indexed single-row
    read per interval (LISTEN/NOTIFY would push sooner, but a NOTIFY in every write takes a
    database-wide lock at commit, and a dropped listener misses changes silently).
    """

    def __init__(
        self,
        params: Params,
        query: sql.Composed,
        changed: Callable[[tuple[Any, ...]], bool],
        *,
        every: float,
        name: str,
    ) -> None:
        self.params = params
        self.query = query
        self.changed = changed
        self.every = every
        self.error: str | None = None
        self._last: tuple[Any, ...] | None = None
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poll(self) -> None:
        """Read the row now (on the caller's thread)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.params, purpose="watch", autocommit=True)
            with bounded(self._conn, self.params, POLL_SECONDS):
                row = self._conn.execute(self.query).fetchone()
        except (psycopg.Error, DatabaseUnavailable) as exc:
            self._drop()
            error = unreachable(self.params, exc) if isinstance(exc, psycopg.Error) else str(exc)
            if error != self.error:
                log.warning("%s", error)
            self.error = error
            return
        if self.error is not None:
            log.info("PostgreSQL at %s answers again", where(self.params))
            self.error = None
        if row is not None and tuple(row) != self._last and self.changed(tuple(row)):
            self._last = tuple(row)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()
        self._drop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # A poll is bounded (a connect by its timeout, a read by POLL_SECONDS), but a stop
            # does not wait that long: the thread ends on its own (a daemon, it holds no
            # record, and its connection goes with the process).
            self._thread.join(STOP_WAIT)
        else:
            self._drop()


class Database:
    """One PostgreSQL database as the gateway uses it: its address (shown without a password),
    connections that fail with a clear StoreError, its schema, and watches on it.

    Handed to what keeps access state there (access.pg_keys), which knows only this shape.
    """

    def __init__(self, dsn: str) -> None:
        self.params = parse(dsn)
        self.where = where(self.params)

    def connect(self, purpose: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        return connect(self.params, purpose=purpose, autocommit=autocommit)

    def unreachable(self, exc: psycopg.Error) -> str:
        return unreachable(self.params, exc)

    def bounded(self, conn: psycopg.Connection[Any]) -> contextlib.AbstractContextManager[Any]:
        """One operation on `conn` within OPERATION_SECONDS (TimedOut, a StoreError, past it)."""
        return bounded(conn, self.params)

    def migrate(self) -> int:
        return migrate(self.params)

    def watch(
        self,
        query: sql.Composed,
        changed: Callable[[tuple[Any, ...]], bool],
        *,
        every: float,
        name: str,
    ) -> Watch:
        return Watch(self.params, query, changed, every=every, name=name)
