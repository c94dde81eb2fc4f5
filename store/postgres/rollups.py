"""The PostgreSQL store's filters and stats, answered from sums kept as records arrive.

Summing a million records on every dashboard poll would read the whole log (over a GB).
Instead, the transaction that stores a batch also adds it to two rollups, as the TinyDB
store keeps summaries beside each closed file:

    usage_hourly      per UTC hour and combination of dimensions: calls, tokens, seconds,
                      and histograms of total and first-token time
    usage_daily_hist  per UTC day and combination: the same histograms

stats() reads the daily histograms for the whole days in the asked range, the hourly rows
for the whole hours (for its edges, for the histograms), and the records themselves only for
the partial hours at the edges, or for a series finer than an hour. Only the records a batch
actually added are summed (a batch sent again adds nothing twice), and retention takes what
it deletes out of the rollups in the same transaction.

Percentiles come from the same logarithmic histogram as store.stats, with the same bucket
formula, so both stores report the same figures. Every value is a query parameter.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from ..records import Bucket, GroupStats, Stats, Totals, UsageQuery, UsageRecord, iso
from ..stats import ZERO, gpu_load_seconds, hist_bucket, hist_percentile
from .database import DAILY_COLUMNS, DIMS, HOURLY_COLUMNS, SCHEMA, SUMS

USAGE = sql.Identifier(SCHEMA, "usage")
HOURLY = sql.Identifier(SCHEMA, "usage_hourly")
DAILY = sql.Identifier(SCHEMA, "usage_daily_hist")
HOUR = 3600
DAY = 86400
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
    ("by_key", ("key_label",)),
]
BREAKDOWNS = [b for b in BREAKDOWNS if b[0] in {f.name for f in msgspec.structs.fields(Stats)}]

_DIMS_SQL = sql.SQL(", ").join(sql.Identifier(d) for d in DIMS)
_EVAL = sql.SQL("(eval_seconds <> 0 AND output_tokens <> 0 AND NOT tokens_estimated)")
_HIST = "CASE WHEN coalesce({0}, 0) <= 1e-6 THEN {1} ELSE floor(ln({0}) / ln(1.1::float8))::int END"
_SB = sql.SQL(_HIST.format("total_seconds", ZERO))
_TB = sql.SQL(_HIST.format("ttft_seconds", ZERO))

Dims = tuple[str | None, ...]


def text(value: str | None) -> str | None:
    """A value as a text column holds it: PostgreSQL text cannot hold NUL (the record's own
    JSON, in `doc`, keeps the value exactly)."""
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


_dims = operator.attrgetter(*DIMS)


def dims_of(record: UsageRecord) -> Dims:
    dims: Dims = _dims(record)
    for value in dims:
        if value is not None and "\x00" in value:
            return tuple(text(v) for v in dims)
    return dims


# -- filters -----------------------------------------------------------------------------------


def _dim_clauses(q: UsageQuery) -> tuple[list[sql.Composable], list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for field, column in FILTERS:
        value = getattr(q, field)
        if value is not None:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(text(value))
    return clauses, params


def _join(clauses: Sequence[sql.Composable]) -> sql.Composable:
    if not clauses:
        return sql.SQL("true")
    return sql.SQL("(") + sql.SQL(" AND ").join(clauses) + sql.SQL(")")


def where(q: UsageQuery, *, paging: bool) -> tuple[sql.Composable, list[Any]]:
    """The WHERE clause of q's filters (and cursors, if paging), and its parameters."""
    clauses, params = _dim_clauses(q)
    for value, clause in (
        (q.since, "date >= %s"),
        (q.until, "date < %s"),
        (q.before if paging else None, "id < %s"),
        (q.after if paging else None, "id > %s"),
    ):
        if value is not None:
            clauses.append(sql.SQL(clause))
            params.append(text(value) if isinstance(value, str) else value)
    return sql.SQL("WHERE ") + _join(clauses), params


# -- keeping the rollups ----------------------------------------------------------------------


def _start(date: str, seconds: int) -> datetime:
    moment = datetime.fromisoformat(date)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # In whole seconds, exactly: a float timestamp rounds 23:59:59.999985 up to the next day
    # in year 6326 (and nearer, at finer times).
    since = moment - EPOCH
    whole = since.days * DAY + since.seconds
    return EPOCH + timedelta(seconds=whole - whole % seconds)


def _prefix(date: str, seconds: int) -> str:
    """The part of a date's text that names its hour (or day), when the text is the store's
    own UTC form (records.iso: 2026-11-30T23:40:19.538123+00:00); else the whole text."""
    if len(date) == 32 and date.endswith("+00:00"):
        return date[:13] if seconds == HOUR else date[:10] if seconds == DAY else date
    return date


def add(cur: psycopg.Cursor[Any], records: Iterable[UsageRecord], *, sign: int = 1) -> None:
    """Add these records to the rollups (sign=-1: take them out)."""
    cells: dict[tuple[Any, ...], list[float]] = {}
    hists: dict[tuple[Any, ...], tuple[dict[int, int], dict[int, int]]] = {}
    hourly: dict[tuple[Any, ...], tuple[dict[int, int], dict[int, int]]] = {}
    # Hour and day starts by the date's text, for this batch only: a batch's records fall in
    # a few hours, and parsing each date twice was a sixth of the writer's Python.
    starts: dict[tuple[str, int], datetime] = {}

    def start(date: str, seconds: int) -> datetime:
        key = (_prefix(date, seconds), seconds)
        found = starts.get(key)
        if found is None:
            found = starts[key] = _start(date, seconds)
        return found

    for r in records:
        dims = dims_of(r)
        cell_hour = start(r.date, HOUR)
        cell = cells.setdefault((cell_hour, *dims), [0, 0, 0, 0.0, 0.0, 0.0, 0, 0.0, 0.0, 0.0])
        cell[0] += 1
        cell[1] += r.input_tokens or 0
        cell[2] += r.output_tokens or 0
        cell[3] += r.total_seconds or 0.0
        cell[4] += r.upstream_seconds or 0.0
        if r.eval_seconds and r.output_tokens and not r.tokens_estimated:
            cell[5] += r.eval_seconds
            cell[6] += r.output_tokens
        if r.gpu_seconds:
            cell[7] += r.gpu_seconds
            cell[8] += gpu_load_seconds(r)
            cell[9] += r.cost or 0.0
        seconds_bucket = hist_bucket(r.total_seconds or 0.0)
        ttft_bucket = None if r.ttft_seconds is None else hist_bucket(r.ttft_seconds)
        for into, key in ((hourly, (cell_hour, *dims)), (hists, (start(r.date, DAY), *dims))):
            seconds, ttft = into.setdefault(key, ({}, {}))
            seconds[seconds_bucket] = seconds.get(seconds_bucket, 0) + 1
            if ttft_bucket is not None:
                ttft[ttft_bucket] = ttft.get(ttft_bucket, 0) + 1
    if not cells:
        return
    # Through temporary tables: one COPY and one INSERT each, however many hours and days a
    # batch spans (an import spans months; statements per row took 1 ms each).
    for table, incoming in ((HOURLY, "hourly_incoming"), (DAILY, "daily_incoming")):
        cur.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(
                sql.Identifier(incoming), table
            )
        )
    encode = msgspec.json.encode
    with cur.copy(
        sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier("hourly_incoming"), _columns(HOURLY_COLUMNS)
        )
    ) as copy:
        for k, cell in cells.items():
            seconds, ttft = hourly[k]
            copy.write_row(
                (
                    *k,
                    *(v * sign for v in cell),
                    encode({b: n * sign for b, n in seconds.items()}).decode(),
                    encode({b: n * sign for b, n in ttft.items()}).decode(),
                )
            )
    with cur.copy(
        sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier("daily_incoming"), _columns(DAILY_COLUMNS)
        )
    ) as copy:
        for k, (seconds, ttft) in hists.items():
            copy.write_row(
                (
                    *k,
                    encode({b: n * sign for b, n in seconds.items()}).decode(),
                    encode({b: n * sign for b, n in ttft.items()}).decode(),
                )
            )
    # In key order, so that two gateways adding to the same rows lock them in one order.
    cur.execute(
        sql.SQL(
            "INSERT INTO {table} AS c ({columns}) SELECT {columns} FROM hourly_incoming "
            "ORDER BY {key} ON CONFLICT ({key}) DO UPDATE SET {adds}, "
            "seconds_hist = {add}(c.seconds_hist, EXCLUDED.seconds_hist), "
            "ttft_hist = {add}(c.ttft_hist, EXCLUDED.ttft_hist)"
        ).format(
            table=HOURLY,
            columns=_columns(HOURLY_COLUMNS),
            key=_columns(("hour", *DIMS)),
            adds=sql.SQL(", ").join(
                sql.SQL("{0} = c.{0} + EXCLUDED.{0}").format(sql.Identifier(s)) for s in SUMS
            ),
            add=sql.Identifier(SCHEMA, "hist_add"),
        )
    )
    cur.execute(
        sql.SQL(
            "INSERT INTO {table} AS h ({columns}) SELECT {columns} FROM daily_incoming "
            "ORDER BY {key} ON CONFLICT ({key}) DO UPDATE SET "
            "seconds_hist = {add}(h.seconds_hist, EXCLUDED.seconds_hist), "
            "ttft_hist = {add}(h.ttft_hist, EXCLUDED.ttft_hist)"
        ).format(
            table=DAILY,
            columns=_columns(DAILY_COLUMNS),
            key=_columns(("day", *DIMS)),
            add=sql.Identifier(SCHEMA, "hist_add"),
        )
    )
    # A second call in the same transaction must not add these rows again.
    cur.execute("DELETE FROM hourly_incoming")
    cur.execute("DELETE FROM daily_incoming")


def _order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, v if v is not None else "") for v in key)


def _columns(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def retain(cur: psycopg.Cursor[Any], cutoff: datetime) -> int:
    """Delete the records older than cutoff, and their share of the rollups; how many."""
    # The rollups of the hour and the day the cutoff falls in lose only part of their
    # records: take those out one by one (the decoded records, as they were added).
    hour, day = _start(iso(cutoff), HOUR), _start(iso(cutoff), DAY)
    cur.execute(
        sql.SQL("SELECT doc::text FROM {} WHERE date >= %s AND date < %s").format(USAGE),
        (day, cutoff),
    )
    straddling = [msgspec.json.decode(doc, type=UsageRecord) for (doc,) in cur.fetchall()]
    cur.execute(sql.SQL("DELETE FROM {} WHERE date < %s").format(USAGE), (cutoff,))
    removed = cur.rowcount
    cur.execute(sql.SQL("DELETE FROM {} WHERE hour < %s").format(HOURLY), (hour,))
    cur.execute(sql.SQL("DELETE FROM {} WHERE day < %s").format(DAILY), (day,))
    in_hour = [r for r in straddling if _start(r.date, HOUR) >= hour]
    add(cur, in_hour, sign=-1)
    # The day's histograms: the records of the day before the cutoff's hour too.
    _take_hists(cur, [r for r in straddling if _start(r.date, HOUR) < hour])
    cur.execute(sql.SQL("DELETE FROM {} WHERE calls = 0").format(HOURLY))
    return removed


def _take_hists(cur: psycopg.Cursor[Any], records: list[UsageRecord]) -> None:
    """Take records out of the daily histograms only (their hours are gone already)."""
    if not records:
        return
    hists: dict[tuple[Any, ...], tuple[dict[int, int], dict[int, int]]] = {}
    for r in records:
        seconds, ttft = hists.setdefault((_start(r.date, DAY), *dims_of(r)), ({}, {}))
        bucket = hist_bucket(r.total_seconds or 0.0)
        seconds[bucket] = seconds.get(bucket, 0) - 1
        if r.ttft_seconds is not None:
            bucket = hist_bucket(r.ttft_seconds)
            ttft[bucket] = ttft.get(bucket, 0) - 1
    key = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT DISTINCT FROM %s").format(sql.Identifier(c)) for c in ("day", *DIMS)
    )
    cur.executemany(
        sql.SQL(
            "UPDATE {table} SET seconds_hist = {add}(seconds_hist, %s), "
            "ttft_hist = {add}(ttft_hist, %s) WHERE {key}"
        ).format(table=DAILY, add=sql.Identifier(SCHEMA, "hist_add"), key=key),
        [
            (msgspec.json.encode(s).decode(), msgspec.json.encode(t).decode(), *k)
            for k, (s, t) in sorted(hists.items(), key=lambda i: _order(i[0]))
        ],
    )


# -- stats -------------------------------------------------------------------------------------


def _ceil(moment: datetime | None, seconds: int) -> datetime | None:
    if moment is None:
        return None
    start = _start(iso(moment), seconds)
    return start if start == moment else start + timedelta(seconds=seconds)


def _floor(moment: datetime | None, seconds: int) -> datetime | None:
    return None if moment is None else _start(iso(moment), seconds)


Segment = tuple[int | None, datetime | None, datetime | None]


def _segments(
    since: datetime | None, until: datetime | None, sizes: Sequence[int]
) -> list[Segment]:
    """since..until cut into whole periods of the first size, the rest into whole periods of
    the next, and so on; what is left (size None) is read from the records."""
    if since is not None and until is not None and since >= until:
        return []
    if not sizes:
        return [(None, since, until)]
    size = sizes[0]
    try:
        first = _ceil(since, size)
    except OverflowError:  # since is in the last period a datetime holds: none whole after it
        return _segments(since, until, sizes[1:])
    last = _floor(until, size)
    if first is not None and last is not None and first >= last:
        return _segments(since, until, sizes[1:])
    found: list[Segment] = [(size, first, last)]
    if since is not None and first != since:
        found += _segments(since, first, sizes[1:])
    if until is not None and last != until:
        found += _segments(last, until, sizes[1:])
    return found


def _ranges(
    segments: list[Segment], size: int | None, column: str
) -> tuple[sql.Composable, list[Any]]:
    """The segments of one size, as one SQL condition on `column`."""
    params: list[Any] = []
    ors = [_join(_range(a, b, params, column=column)) for n, a, b in segments if n == size]
    return sql.SQL("(") + sql.SQL(" OR ").join(ors or [sql.SQL("false")]) + sql.SQL(")"), params


def _range(
    since: datetime | None, until: datetime | None, params: list[Any], *, column: str = "date"
) -> list[sql.Composable]:
    clauses: list[sql.Composable] = []
    if since is not None:
        clauses.append(sql.SQL("{} >= %s").format(sql.Identifier(column)))
        params.append(since)
    if until is not None:
        clauses.append(sql.SQL("{} < %s").format(sql.Identifier(column)))
        params.append(until)
    return clauses


def _sums_source(
    dims: sql.Composable, dim_params: list[Any], segments: list[Segment]
) -> tuple[sql.Composable, list[Any]]:
    """Rows of (at, dims..., sums...): the hourly rollup's whole hours, and the records of
    the rest, each counted as one call."""
    rolled, rolled_params = _ranges(segments, HOUR, "hour")
    raw, raw_params = _ranges(segments, None, "date")
    source = sql.SQL(
        """SELECT hour AS at, {dims}, calls, input_tokens, output_tokens, total_seconds,
            upstream_seconds, eval_seconds, eval_tokens, gpu_seconds, gpu_load_seconds, cost
        FROM {hourly} WHERE {filters} AND {rolled}
        UNION ALL
        SELECT date, {dims}, 1, coalesce(input_tokens, 0), coalesce(output_tokens, 0),
            coalesce(total_seconds, 0), coalesce(upstream_seconds, 0),
            CASE WHEN {ev} THEN eval_seconds ELSE 0 END,
            CASE WHEN {ev} THEN output_tokens ELSE 0 END,
            coalesce(gpu_seconds, 0), coalesce(gpu_load_seconds, 0), coalesce(cost, 0)
        FROM {usage} WHERE {filters} AND {raw}"""
    ).format(
        dims=_DIMS_SQL,
        hourly=HOURLY,
        usage=USAGE,
        filters=dims,
        rolled=rolled,
        raw=raw,
        ev=_EVAL,
    )
    return source, [*dim_params, *rolled_params, *dim_params, *raw_params]


def stats(cur: psycopg.Cursor[Any], q: UsageQuery, bucket: int) -> Stats:
    clauses, dim_params = _dim_clauses(q)
    dims = _join(clauses)
    hours = _segments(q.since, q.until, [HOUR])

    # The series: from the hourly sums when its buckets are whole hours, else the records.
    if bucket % HOUR == 0:
        source, params = _sums_source(dims, dim_params, hours)
    else:
        params = [*dim_params]
        source = sql.SQL(
            """SELECT date AS at, status, 1 AS calls, coalesce(input_tokens, 0) AS input_tokens,
                coalesce(output_tokens, 0) AS output_tokens,
                coalesce(upstream_seconds, 0) AS upstream_seconds,
                coalesce(gpu_seconds, 0) AS gpu_seconds,
                coalesce(gpu_load_seconds, 0) AS gpu_load_seconds, coalesce(cost, 0) AS cost
            FROM {} WHERE {} AND {}"""
        ).format(USAGE, dims, _join(_range(q.since, q.until, params)))
    cur.execute(
        sql.SQL(
            """SELECT extract(epoch FROM bk)::bigint, status, sum(calls)::bigint,
                sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(upstream_seconds),
                sum(gpu_seconds), sum(gpu_load_seconds), sum(cost)
            FROM (SELECT date_bin(make_interval(secs => %s), at,
                    timestamptz '1970-01-01 00:00:00+00') AS bk, * FROM ({}) AS s) AS b
            GROUP BY 1, 2 ORDER BY 1"""
        ).format(source),
        [bucket, *params],
    )
    totals = Totals()
    series: dict[int, list[int]] = {}
    model_seconds = gpu = gpu_load = cost = 0.0
    for start, status, calls, input_, output, model, gpu_s, load_s, cost_s in cur.fetchall():
        row = series.setdefault(start, [0, 0, 0])
        row[0] += calls
        row[1] += int(input_)
        row[2] += int(output)
        totals.calls += calls
        totals.input_tokens += int(input_)
        totals.output_tokens += int(output)
        model_seconds += model
        gpu += gpu_s
        gpu_load += load_s
        cost += cost_s
        if status == "error":
            totals.errors += calls
        elif status == "cancelled":
            totals.cancelled += calls
    totals.model_seconds = round(model_seconds, 6)
    totals.gpu_seconds = round(gpu, 6)
    totals.gpu_load_seconds = round(gpu_load, 6)
    totals.cost = round(cost, 9)

    # The breakdowns' sums: every combination of dimensions, whatever the time.
    source, params = _sums_source(dims, dim_params, hours)
    cur.execute(
        sql.SQL(
            """SELECT {dims}, sum(calls)::bigint, sum(input_tokens)::bigint,
                sum(output_tokens)::bigint, sum(total_seconds), sum(upstream_seconds),
                sum(eval_seconds), sum(eval_tokens)::bigint, sum(gpu_seconds),
                sum(gpu_load_seconds), sum(cost)
            FROM ({source}) AS s GROUP BY {dims}"""
        ).format(dims=_DIMS_SQL, source=source),
        params,
    )
    groups: dict[str, dict[str, list[float]]] = {name: {} for name, _ in BREAKDOWNS}
    for row in cur.fetchall():
        values = dict(zip(DIMS, row[: len(DIMS)], strict=True))
        calls, input_, output, total, model, eval_s, eval_t, gpu_s, load_s, cost_s = row[
            len(DIMS) :
        ]
        errors = calls if values["status"] == "error" else 0
        for name, cols in BREAKDOWNS:
            key = "/".join(values[c] or "-" for c in cols)
            g = groups[name].setdefault(key, [0, 0, 0, 0, 0.0, 0.0, 0.0, 0, 0.0, 0.0, 0.0])
            for i, value in enumerate(
                (calls, errors, input_, output, total, model, eval_s, eval_t, gpu_s, load_s, cost_s)
            ):
                g[i] += value

    # The breakdowns' histograms: the daily rollup's whole days, the hourly rollup's whole
    # hours at the edges, and the records of what is left.
    parts = _segments(q.since, q.until, [DAY, HOUR])
    by_day, day_params = _ranges(parts, DAY, "day")
    by_hour, hour_params = _ranges(parts, HOUR, "hour")
    raw, raw_params = _ranges(parts, None, "date")
    # Merged per combination of dimensions first (a few per day), then into each breakdown.
    by_dims: dict[tuple[Any, ...], tuple[dict[int, int], dict[int, int]]] = {}

    def count(dims_values: tuple[Any, ...], hist: dict[int, int], *, is_ttft: bool) -> None:
        merged = by_dims.setdefault(dims_values, ({}, {}))[is_ttft]
        for b, n in hist.items():
            merged[b] = merged.get(b, 0) + n

    cur.execute(
        sql.SQL(
            """SELECT {dims}, seconds_hist::text, ttft_hist::text FROM {daily}
                WHERE {filters} AND {by_day}
            UNION ALL
            SELECT {dims}, seconds_hist::text, ttft_hist::text FROM {hourly}
                WHERE {filters} AND {by_hour}"""
        ).format(
            dims=_DIMS_SQL,
            daily=DAILY,
            hourly=HOURLY,
            filters=dims,
            by_day=by_day,
            by_hour=by_hour,
        ),
        [*dim_params, *day_params, *dim_params, *hour_params],
    )
    decode = msgspec.json.Decoder(dict[int, int]).decode
    for row in cur.fetchall():
        count(row[: len(DIMS)], decode(row[len(DIMS)]), is_ttft=False)
        count(row[: len(DIMS)], decode(row[len(DIMS) + 1]), is_ttft=True)
    # Grouped by position: the dimensions, then the bucket (after the true/false column).
    by = sql.SQL(", ".join(str(n) for n in [*range(1, len(DIMS) + 1), len(DIMS) + 2]))
    cur.execute(
        sql.SQL(
            """SELECT {dims}, false, {sb}, count(*) FROM {usage} WHERE {filters} AND {raw}
                GROUP BY {by}
            UNION ALL
            SELECT {dims}, true, {tb}, count(*) FROM {usage}
                WHERE {filters} AND {raw} AND ttft_seconds IS NOT NULL
                GROUP BY {by}"""
        ).format(dims=_DIMS_SQL, sb=_SB, tb=_TB, usage=USAGE, filters=dims, raw=raw, by=by),
        [*dim_params, *raw_params, *dim_params, *raw_params],
    )
    for row in cur.fetchall():
        is_ttft, b, n = row[len(DIMS) :]
        count(row[: len(DIMS)], {b: n}, is_ttft=is_ttft)
    seconds: dict[str, dict[str, dict[int, int]]] = {name: {} for name, _ in BREAKDOWNS}
    ttft: dict[str, dict[str, dict[int, int]]] = {name: {} for name, _ in BREAKDOWNS}
    for dims_values, hists in by_dims.items():
        values = dict(zip(DIMS, dims_values, strict=True))
        for name, cols in BREAKDOWNS:
            key = "/".join(values[c] or "-" for c in cols)
            for into, hist in ((seconds, hists[0]), (ttft, hists[1])):
                merged = into[name].setdefault(key, {})
                for b, n in hist.items():
                    merged[b] = merged.get(b, 0) + n

    breakdowns: dict[str, Any] = {}
    for name, _ in BREAKDOWNS:
        rows = []
        for key, g in groups[name].items():
            calls, errors, input_, output, total, model, eval_s, eval_t, gpu_s, load_s, cost_s = g
            if not calls:
                continue
            rows.append(
                GroupStats(
                    key=key,
                    calls=int(calls),
                    input_tokens=int(input_),
                    output_tokens=int(output),
                    total_seconds=round(total, 6),
                    model_seconds=round(model, 6),
                    errors=int(errors),
                    p50_seconds=hist_percentile(_live(seconds[name].get(key)), 0.50),
                    p95_seconds=hist_percentile(_live(seconds[name].get(key)), 0.95),
                    p50_ttft_seconds=hist_percentile(_live(ttft[name].get(key)), 0.50),
                    tokens_per_second=round(eval_t / eval_s, 3) if eval_s else None,
                    gpu_seconds=round(gpu_s, 6),
                    gpu_load_seconds=round(load_s, 6),
                    cost=round(cost_s, 9),
                )
            )
        breakdowns[name] = sorted(rows, key=lambda row: (-row.calls, row.key))
    return Stats(
        totals=totals,
        bucket_seconds=bucket,
        series=[
            Bucket(
                start=iso(datetime.fromtimestamp(start, UTC)),
                calls=c,
                input_tokens=i,
                output_tokens=o,
            )
            for start, (c, i, o) in sorted(series.items())
            if c
        ],
        **breakdowns,
    )


def _live(hist: dict[int, int] | None) -> dict[int, int]:
    """A histogram without the buckets retention emptied."""
    return {b: n for b, n in (hist or {}).items() if n > 0}
