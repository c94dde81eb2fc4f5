"""What every usage store promises, checked against each: the TinyDB folder and PostgreSQL.

Each test runs once per store. The TinyDB store gets files of 50 records here, so that a few
hundred records cross many files; the PostgreSQL store gets a database of its own (tests/pg.py).
What only one store does (TinyDB's files and journal, PostgreSQL's schema and outages) is
tested beside it: tests/test_store_tinydb_store.py, tests/test_store_postgres_store.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tinydb import TinyDB

from store import Stats, UsageQuery, UsageRecord, UsageStore, base, iso, open_store
from store.stats import compute_stats
from store.tinydb import files
from store.tinydb import store as tinydb_store
from tests import pg
from tests.store_helpers import (
    BASE,
    check_stats,
    fill,
    newest_first,
    query,
    record,
    stats,
)


class Backend:
    """Where one store keeps its records, and a way to look at them past the store."""

    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location

    def open(self, *, retention_days: float | None = None) -> UsageStore:
        return open_store(self.location, retention_days=retention_days)

    def kept_ids(self) -> set[str]:
        """Every record id the store's backing holds (read with the store closed)."""
        if self.kind == "tinydb":
            ids: set[str] = set()
            for path in (Path(self.location) / "usage").glob("*.json"):
                with TinyDB(path, access_mode="r") as db:
                    ids.update(str(doc["id"]) for doc in db.table(files.TABLE).all())
            return ids
        return {str(i) for i in pg.column(self.location, "SELECT id FROM ollama_host.usage")}


@pytest.fixture(params=["tinydb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(
    request: pytest.FixtureRequest, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    if request.param == "tinydb":
        monkeypatch.setattr(tinydb_store, "SEGMENT_RECORDS", 50)
        yield Backend("tinydb", str(data_dir))
        return
    with pg.database() as dsn:
        yield Backend("postgresql", dsn)


@pytest.fixture
def store(backend: Backend) -> Iterator[UsageStore]:
    opened = backend.open()
    yield opened
    asyncio.run(opened.aclose())


def _rounded(value: Any) -> Any:
    """A Stats as plain data, floats rounded: the stores add floats in different orders."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def assert_same_stats(found: Stats, expected: Stats) -> None:
    assert _rounded(msgspec.to_builtins(found)) == _rounded(msgspec.to_builtins(expected))


def test_query_pages_newest_first(store: UsageStore) -> None:
    records = [record(n) for n in range(300)]
    random.Random(3).shuffle(records)  # calls finish out of order
    fill(store, records)
    ordered = newest_first(records)

    first = query(store, limit=40)
    second = query(store, limit=40, before=first[-1].id)
    by_offset = query(store, limit=40, offset=40)
    newer = query(store, limit=1000, after=ordered[10].id)

    assert first == ordered[:40]
    assert second == ordered[40:80]
    assert by_offset == ordered[40:80]
    assert newer == ordered[:10]


def test_query_filters_match_a_plain_scan(store: UsageStore) -> None:
    records = [record(n) for n in range(400)]
    fill(store, records)
    since, until = BASE + timedelta(hours=1), BASE + timedelta(hours=3)

    found = query(
        store, project="p1", model="qwen", status="ok", since=since, until=until, limit=1000
    )
    by_process = query(store, process_id="proc1", subprocess_id="sub", limit=1000)

    expected = [
        r
        for r in records
        if r.project == "p1"
        and r.model_name == "qwen"
        and r.status == "ok"
        and iso(since) <= r.date < iso(until)
    ]
    assert found == newest_first(expected)
    assert found
    subs = [r for r in records if r.process_id == "proc1" and r.subprocess_id == "sub"]
    assert by_process == newest_first(subs)
    assert by_process


FRONTS = [
    ("seed", "/api/v1/ai/ask_sync"),
    ("ollama", "/api/chat"),
    ("openai", "/v1/chat/completions"),
]


def routed(n: int) -> UsageRecord:
    """A record that came in by one of the fronts and was answered by one of two upstreams."""
    front, endpoint = FRONTS[n % 3]
    return record(n, front=front, endpoint=endpoint, upstream=f"gpu{n % 2}")


@pytest.mark.parametrize("bucket", [3600, 86400, 300])
def test_stats_match_the_records(store: UsageStore, bucket: int) -> None:
    records = [routed(n) for n in range(700)]  # 7 hours, most in closed TinyDB files
    fill(store, records)

    found = stats(store, bucket)

    check_stats(found, records, bucket)
    assert_same_stats(found, compute_stats(records, bucket))


def test_stats_with_filters_and_unaligned_range(store: UsageStore) -> None:
    records = [record(n) for n in range(700)]
    fill(store, records)
    since, until = BASE + timedelta(minutes=95), BASE + timedelta(hours=5, minutes=10)

    found = stats(store, 3600, project="p2", since=since, until=until)

    wanted = [r for r in records if r.project == "p2" and iso(since) <= r.date < iso(until)]
    check_stats(found, wanted, 3600)
    assert_same_stats(found, compute_stats(wanted, 3600))


@pytest.mark.skipif(
    "front" not in {f.name for f in msgspec.structs.fields(UsageQuery)},
    reason="UsageQuery has no front, endpoint or upstream filter yet",
)
def test_filters_by_front_endpoint_and_upstream(store: UsageStore) -> None:
    records = [routed(n) for n in range(90)]
    fill(store, records)

    found = query(store, front="ollama", upstream="gpu1", limit=1000)
    by_endpoint = query(store, endpoint="/v1/chat/completions", limit=1000)
    counted = stats(store, 3600, front="openai")

    want = [r for r in records if r.front == "ollama" and r.upstream == "gpu1"]
    assert found == newest_first(want)
    assert by_endpoint == newest_first([r for r in records if r.front == "openai"])
    assert_same_stats(counted, compute_stats([r for r in records if r.front == "openai"], 3600))


@pytest.mark.parametrize("bucket", [3600, 86400, 300])
def test_stats_over_days_with_edges_inside_hours_and_days(store: UsageStore, bucket: int) -> None:
    records = [record(n, at=BASE + timedelta(minutes=10 * n)) for n in range(3 * 144)]
    fill(store, records)
    since = BASE.replace(hour=0) + timedelta(hours=7, minutes=13)
    until = since + timedelta(days=2, hours=10, minutes=34)

    found = stats(store, bucket, since=since, until=until)
    per_model = stats(store, bucket, model="qwen", since=since)

    inside = [r for r in records if iso(since) <= r.date < iso(until)]
    assert_same_stats(found, compute_stats(inside, bucket))
    qwen = [r for r in records if r.model_name == "qwen" and iso(since) <= r.date]
    assert_same_stats(per_model, compute_stats(qwen, bucket))


def test_stats_group_missing_and_dash_values_as_one_row(store: UsageStore) -> None:
    records = [
        record(1, project=None, process_id=None, subprocess_id=None),
        record(2, project="-", process_id="-", subprocess_id=None, tokens_estimated=True),
        record(3, project="a", ttft_seconds=None, total_seconds=0.0, eval_seconds=0.0),
    ]
    fill(store, records)

    found = stats(store, 60)

    assert_same_stats(found, compute_stats(records, 60))
    assert [(row.key, row.calls) for row in found.by_project] == [("-", 2), ("a", 1)]


def test_stats_of_nothing(store: UsageStore) -> None:
    assert_same_stats(stats(store, 3600, project="nobody"), compute_stats([], 3600))


def test_changes_move_when_records_are_stored(store: UsageStore) -> None:
    before = store.changes

    fill(store, [record(1)])
    once = store.changes
    fill(store, [record(2), record(3)])

    assert before != once != store.changes


def test_retention_deletes_only_records_older_than_the_setting(backend: Backend) -> None:
    now = datetime.now(UTC)
    # Old and new on both sides of the limit, within the same hour and day.
    limit = now - timedelta(days=30)
    old = [record(n, at=limit - timedelta(minutes=5 + n)) for n in range(120)]
    old += [record(n, at=now - timedelta(days=40, minutes=n)) for n in range(120, 160)]
    new = [record(n, at=limit + timedelta(minutes=5 + n)) for n in range(160, 280)]
    new += [record(n, at=now - timedelta(days=5, minutes=n)) for n in range(280, 320)]
    first = backend.open()
    fill(first, [*old, *new])
    asyncio.run(first.aclose())

    store = backend.open(retention_days=30)
    try:
        fill(store, [])
        found = query(store, limit=1000)
        hourly, daily = stats(store, 3600), stats(store, 86400)
    finally:
        asyncio.run(store.aclose())

    assert found == newest_first(new)
    assert_same_stats(hourly, compute_stats(new, 3600))
    assert_same_stats(daily, compute_stats(new, 86400))
    assert backend.kept_ids() == {r.id for r in new}


def test_a_record_that_cannot_be_encoded_is_dropped_not_the_batch(store: UsageStore) -> None:
    fill(store, [record(1), record(2, output="\ud800"), record(3)])

    assert [r.id for r in query(store)] == [record(3).id, record(1).id]
    assert store.health().status == "ok"


def test_a_clean_close_keeps_every_record_appended(backend: Backend) -> None:
    records = [record(n) for n in range(300)]
    store = backend.open()
    for r in records:
        store.append(r)  # no flush: closing must write them
    asyncio.run(store.aclose())

    assert backend.kept_ids() == {r.id for r in records}
    reopened = backend.open()
    try:
        assert query(reopened, limit=1000) == newest_first(records)
        assert reopened.health().status == "ok"
        assert reopened.health().pending == 0
    finally:
        asyncio.run(reopened.aclose())


def test_export_pages_newest_first_with_filters(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "EXPORT_PAGE", 7)
    records = [record(n) for n in range(100)]
    fill(store, records)

    async def export() -> list[list[UsageRecord]]:
        return [page async for page in store.export(UsageQuery(project="p1", limit=3, offset=5))]

    pages = asyncio.run(export())

    assert [len(page) for page in pages] == [7, 7, 7, 4]  # paging fields are ignored
    assert [r for page in pages for r in page] == newest_first(
        [r for r in records if r.project == "p1"]
    )


ODD = [
    "it's",
    "'; DROP TABLE usage; --",
    '" OR 1=1 --',
    "%_\\",
    "$1 $$ :name %(x)s {}",
    "проект 🚀 ＼",
    "a\x00b",
    "x" * 10_000,
]


def test_odd_filter_values_match_exactly_and_change_nothing(store: UsageStore) -> None:
    records = [record(n) for n in range(40)]
    records += [record(100 + n, project=value) for n, value in enumerate(ODD)]
    fill(store, records)
    changes = store.changes
    ages = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)]

    for n, value in enumerate(ODD):
        [found] = query(store, project=value)
        assert found == record(100 + n, project=value)
        for field in ("process_id", "subprocess_id", "model"):
            assert query(store, **{field: value}) == []
        assert query(store, before=value, limit=1000) == newest_first(
            [r for r in records if r.id < value]
        )
        assert query(store, after=value, limit=1000) == newest_first(
            [r for r in records if r.id > value]
        )
        assert stats(store, 60, project=value).totals.calls == 1
    assert query(store, since=ages[0], until=ages[1], limit=1000) == newest_first(records)
    assert query(store, since=ages[1], limit=1000) == []
    assert query(store, until=ages[0], limit=1000) == []
    assert query(store, offset=(1 << 64) - 1) == []
    assert query(store, project="p1", offset=(1 << 63) + 1, limit=1) == []
    assert stats(store, 86400, since=ages[0], until=ages[1]).totals.calls == len(records)

    # Nothing was changed by any of it.
    assert store.changes == changes
    assert query(store, limit=1000) == newest_first(records)


def test_health_says_ok_with_nothing_pending(store: UsageStore) -> None:
    fill(store, [record(1)])

    health = store.health()

    assert (health.status, health.pending, health.error) == ("ok", 0, None)


def test_an_unknown_address_scheme_is_refused() -> None:
    from store import StoreError

    with pytest.raises(StoreError, match="postgresql://"):
        open_store("mysql://somewhere/db")


def test_each_store_says_whether_gateways_can_share_it() -> None:
    """A property each store declares, not a scheme known by name elsewhere."""
    from store import TinyDBStore, kind_of, shared

    assert (TinyDBStore.shared, kind_of("postgresql://u@localhost/db").shared) == (False, True)
    assert shared("postgresql://u@localhost/db")
    assert not shared("/var/lib/ollama-host")
    assert not shared(None)
    assert not shared("nosuch://x")
