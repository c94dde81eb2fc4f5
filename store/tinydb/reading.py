"""Reading the usage log: the newest page of a query, and stats over its matches.

Both see the log as the store hands it over at one instant: the closed files'
metas, the records not yet in a closed file (in memory), and a way to get a
closed file's rows. A file is skipped when its meta says it cannot match; a
whole file inside the asked range is summed from its summary; otherwise its
rows are read, and a page's documents are read from the TinyDB file by position.

A page is never cut short by what it cannot read: it says which files held damaged
documents (the store then reads those files' rows from what still reads, and asks
again), and whether a file was rewritten meanwhile (the store asks again).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import msgspec

from ..records import Stats, UsageQuery, UsageRecord, iso
from ..stats import Cell, Dist, StatsBuilder
from . import files
from .files import Row, SegmentMeta

log = logging.getLogger("ollama_host.store")

RowsOf = Callable[[SegmentMeta], list[Row]]
Trusted = Callable[[SegmentMeta], bool]

_Filterable = TypeVar("_Filterable", UsageRecord, Row)


class Filter:
    """A query's filters, with its dates as the strings stored on disk."""

    def __init__(self, q: UsageQuery, *, paging: bool) -> None:
        self.q = q
        self.since = iso(q.since) if q.since else None
        self.until = iso(q.until) if q.until else None
        self.before = q.before if paging else None
        self.after = q.after if paging else None

    def record(self, r: _Filterable) -> bool:
        q = self.q
        return (
            (q.project is None or r.project == q.project)
            and (q.process_id is None or r.process_id == q.process_id)
            and (q.subprocess_id is None or r.subprocess_id == q.subprocess_id)
            and (q.model is None or r.model_name == q.model)
            and (q.status is None or r.status == q.status)
            and (q.front is None or r.front == q.front)
            and (q.endpoint is None or r.endpoint == q.endpoint)
            and (q.upstream is None or r.upstream == q.upstream)
            and (self.since is None or r.date >= self.since)
            and (self.until is None or r.date < self.until)
            and (self.before is None or r.id < self.before)
            and (self.after is None or r.id > self.after)
        )

    def segment(self, m: SegmentMeta) -> bool:
        """False when the file cannot hold a matching record."""
        q = self.q

        def may(values: list[str | None] | None, want: str | None) -> bool:
            return want is None or values is None or want in values

        return (
            may(m.projects, q.project)
            and may(m.process_ids, q.process_id)
            and may(m.subprocess_ids, q.subprocess_id)
            and may(m.models, q.model)
            and may(m.statuses, q.status)
            and may(m.fronts, q.front)
            and may(m.endpoints, q.endpoint)
            and may(m.upstreams, q.upstream)
            and (self.since is None or m.max_date >= self.since)
            and (self.until is None or m.min_date < self.until)
            and (self.before is None or m.min_id < self.before)
            and (self.after is None or m.max_id > self.after)
        )

    def inside(self, m: SegmentMeta) -> bool:
        """True when every record of the file lies within since..until."""
        return (self.since is None or m.min_date >= self.since) and (
            self.until is None or m.max_date < self.until
        )


_Hit = UsageRecord | tuple[SegmentMeta, Row]


def _id(hit: _Hit) -> str:
    return hit[1].id if isinstance(hit, tuple) else hit.id


def _max_id(meta: SegmentMeta) -> str:
    return meta.max_id


def _cell_matches(cell: Cell | Dist, q: UsageQuery) -> bool:
    return (
        (q.project is None or cell.project == q.project)
        and (q.process_id is None or cell.process_id == q.process_id)
        and (q.subprocess_id is None or cell.subprocess_id == q.subprocess_id)
        and (q.model is None or cell.model == q.model)
        and (q.status is None or cell.status == q.status)
        and (q.front is None or cell.front == q.front)
        and (q.endpoint is None or cell.endpoint == q.endpoint)
        and (q.upstream is None or cell.upstream == q.upstream)
    )


class Page(NamedTuple):
    records: list[UsageRecord]
    damaged: list[SegmentMeta]  # files where a document of the page did not read
    moved: list[SegmentMeta]  # files rewritten since their rows were read: the page may be short


def newest_page(
    q: UsageQuery, metas: list[SegmentMeta], recent: list[UsageRecord], rows_of: RowsOf, usage: Path
) -> Page:
    """The records matching q, newest first, from q.offset, at most q.limit of them."""
    match = Filter(q, paging=True)
    need = q.offset + q.limit
    found: list[_Hit] = heapq.nlargest(need, (r for r in recent if match.record(r)), key=_id)
    # Newest files first; stop once no file left can hold anything newer than the page.
    for meta in sorted(filter(match.segment, metas), key=_max_id, reverse=True):
        if len(found) >= need and meta.max_id < _id(found[-1]):
            break
        more = ((meta, row) for row in rows_of(meta) if match.record(row))
        found = heapq.nlargest(need, [*found, *more], key=_id)
    return _documents(found[q.offset : need], usage)


def _documents(hits: list[_Hit], usage: Path) -> Page:
    """The page's records: those in memory as they are, the rest read by their rows."""
    wanted: dict[str, tuple[SegmentMeta, list[Row]]] = {}
    for hit in hits:
        if isinstance(hit, tuple):
            wanted.setdefault(hit[0].name, (hit[0], []))[1].append(hit[1])
    read: dict[str, UsageRecord | None] = {}
    damaged: list[SegmentMeta] = []
    moved: list[SegmentMeta] = []
    for name, (meta, rows) in wanted.items():
        try:
            documents = files.read_documents(usage / name, rows, meta.size)
        except FileNotFoundError:
            moved.append(meta)  # retention removed it meanwhile
            continue
        except OSError as exc:
            log.error("cannot read usage file %s: %s", name, exc)
            continue
        read.update((row.id, record) for row, record in zip(rows, documents.records, strict=True))
        if documents.damaged:
            damaged.append(meta)
        elif None in documents.records:
            moved.append(meta)
    page: list[UsageRecord] = []
    for hit in hits:
        record = read.get(hit[1].id) if isinstance(hit, tuple) else hit
        if record is not None:
            page.append(record)
    return Page(page, damaged, moved)


def stats_over(
    q: UsageQuery,
    bucket_seconds: int,
    metas: list[SegmentMeta],
    recent: list[UsageRecord],
    rows_of: RowsOf,
    usage: Path,
    trusted: Trusted,
) -> Stats:
    """Aggregates over all records matching q's filters (q's paging is ignored).

    A file's summary stands for it only if `trusted(meta)`: not for a file found damaged,
    whose summary still counts the records that no longer read.
    """
    match = Filter(q, paging=False)
    builder = StatsBuilder(bucket_seconds)
    hourly = bucket_seconds % files.SUMMARY_SECONDS == 0
    for meta in filter(match.segment, metas):
        if hourly and match.inside(meta) and trusted(meta):
            # The whole file is in range: its hourly sums answer for it.
            try:
                summary = files.read_summary(files.summary_path(usage, meta.name))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                summary = None
            if summary is not None and summary.meta.size == meta.size:
                for cell in summary.cells:
                    if _cell_matches(cell, q):
                        builder.add(cell)
                for dist in summary.dists:
                    if _cell_matches(dist, q):
                        builder.add_dist(dist)
                continue
        builder.add_records([row for row in rows_of(meta) if match.record(row)])
    builder.add_records([r for r in recent if match.record(r)])
    return builder.build()
