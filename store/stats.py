"""Aggregates over usage records, built from mergeable cells.

A cell sums the records that share a time bucket and the dimensions the dashboard
filters and groups by (model, project, process, subprocess, status, the front,
endpoint and upstream a call took, and its key's label); a dist holds the duration
histograms of one combination of dimensions. Both merge, so the store keeps hourly cells
and dists beside each closed file and answers stats() from those instead of re-reading
every record.

Percentiles come from a histogram of fixed logarithmic buckets (each 10% wider
than the last, from 1 µs up), not from the exact values: a reported p50/p95 is
the middle of the bucket holding that rank, within 5% of the exact figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from .records import Bucket, GroupStats, Stats, Totals, iso

RATIO = 1.1
_LOG_RATIO = math.log(RATIO)
# Values at or below a microsecond (a zero duration) share one bucket, reported as 0.
ZERO = -(10**6)
_ZERO_BELOW = 1e-6

# model, project, process_id, subprocess_id, status, front, endpoint, upstream, key_label
DimsKey = tuple[
    str | None,
    str | None,
    str | None,
    str | None,
    str,
    str | None,
    str | None,
    str | None,
    str | None,
]


class Measured(Protocol):
    """What stats need of a record: a UsageRecord, or the store's Row of one."""

    @property
    def date(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def project(self) -> str | None: ...
    @property
    def process_id(self) -> str | None: ...
    @property
    def subprocess_id(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def input_tokens(self) -> int | None: ...
    @property
    def output_tokens(self) -> int | None: ...
    @property
    def total_seconds(self) -> float: ...
    @property
    def ttft_seconds(self) -> float | None: ...
    @property
    def eval_seconds(self) -> float | None: ...
    @property
    def upstream_seconds(self) -> float | None: ...
    @property
    def tokens_estimated(self) -> bool: ...
    @property
    def front(self) -> str | None: ...
    @property
    def endpoint(self) -> str | None: ...
    @property
    def upstream(self) -> str | None: ...
    @property
    def key_label(self) -> str | None: ...
    @property
    def gpu_seconds(self) -> float | None: ...
    @property
    def cost(self) -> float | None: ...
    @property
    def load_seconds(self) -> float | None: ...
    @property
    def prompt_eval_seconds(self) -> float | None: ...


def gpu_load_seconds(record: Measured) -> float:
    """The part of a call's GPU time that was model loading: its GPU-seconds split as the
    upstream's own report splits its time (load against prompt evaluation and generation).
    0 when the upstream reports no load (llama-server, vLLM)."""
    gpu, load = record.gpu_seconds, record.load_seconds
    if not gpu or not load or load < 0:
        return 0.0
    own = load + max(0.0, record.prompt_eval_seconds or 0.0) + max(0.0, record.eval_seconds or 0.0)
    return gpu * load / own


def hist_bucket(value: float) -> int:
    if value <= _ZERO_BELOW:
        return ZERO
    return math.floor(math.log(value) / _LOG_RATIO)


def hist_value(bucket: int) -> float:
    if bucket == ZERO:
        return 0.0
    return round(float(RATIO ** (bucket + 0.5)), 6)


def hist_percentile(hist: dict[int, int], fraction: float) -> float | None:
    """The value at rank int(fraction * n), the rank the exact computation would pick."""
    count = sum(hist.values())
    if not count:
        return None
    rank = min(count - 1, int(fraction * count))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen > rank:
            return hist_value(bucket)
    raise AssertionError("unreachable: the ranks add up to the count")


def _merge_hist(into: dict[int, int], other: dict[int, int]) -> None:
    for bucket, count in other.items():
        into[bucket] = into.get(bucket, 0) + count


class Cell(msgspec.Struct, array_like=True, kw_only=True):
    """Sums over the records of one time bucket and one combination of dimensions."""

    start: int  # the bucket's first second, Unix time
    model: str | None
    project: str | None
    process_id: str | None
    subprocess_id: str | None
    status: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    upstream_seconds: float = 0.0
    total_seconds: float = 0.0
    eval_seconds: float = 0.0
    eval_tokens: int = 0
    front: str | None = None
    endpoint: str | None = None
    upstream: str | None = None
    key_label: str | None = None
    # GPU time (upstreams.gputime), the part of it that was model loading, and its price.
    gpu_seconds: float = 0.0
    gpu_load_seconds: float = 0.0
    cost: float = 0.0

    def add(self, record: Measured) -> None:
        self.calls += 1
        self.input_tokens += record.input_tokens or 0
        self.output_tokens += record.output_tokens or 0
        self.upstream_seconds += record.upstream_seconds or 0.0
        self.total_seconds += record.total_seconds or 0.0
        if record.eval_seconds and record.output_tokens and not record.tokens_estimated:
            self.eval_seconds += record.eval_seconds
            self.eval_tokens += record.output_tokens
        if record.gpu_seconds:
            self.gpu_seconds += record.gpu_seconds
            self.gpu_load_seconds += gpu_load_seconds(record)
            self.cost += record.cost or 0.0


class Dist(msgspec.Struct, array_like=True, kw_only=True):
    """Histograms of durations for one combination of dimensions, whatever the time.

    Kept apart from the cells because only the breakdowns need percentiles, never
    the time series: merging histograms per hour would cost far more than the sums.
    """

    model: str | None
    project: str | None
    process_id: str | None
    subprocess_id: str | None
    status: str
    seconds_hist: dict[int, int] = msgspec.field(default_factory=dict)
    ttft_hist: dict[int, int] = msgspec.field(default_factory=dict)
    front: str | None = None
    endpoint: str | None = None
    upstream: str | None = None
    key_label: str | None = None

    def add(self, record: Measured) -> None:
        bucket = hist_bucket(record.total_seconds or 0.0)
        self.seconds_hist[bucket] = self.seconds_hist.get(bucket, 0) + 1
        if record.ttft_seconds is not None:
            bucket = hist_bucket(record.ttft_seconds)
            self.ttft_hist[bucket] = self.ttft_hist.get(bucket, 0) + 1


def record_start(record: Measured, bucket_seconds: int) -> int:
    moment = int(datetime.fromisoformat(record.date).timestamp())
    return moment - moment % bucket_seconds


def dims_of(item: Cell | Dist) -> DimsKey:
    return (
        item.model,
        item.project,
        item.process_id,
        item.subprocess_id,
        item.status,
        item.front,
        item.endpoint,
        item.upstream,
        item.key_label,
    )


def _cell(start: int, dims: DimsKey) -> Cell:
    model, project, process_id, subprocess_id, status, front, endpoint, upstream, key = dims
    return Cell(
        start=start,
        model=model,
        project=project,
        process_id=process_id,
        subprocess_id=subprocess_id,
        status=status,
        front=front,
        endpoint=endpoint,
        upstream=upstream,
        key_label=key,
    )


def _dist(dims: DimsKey) -> Dist:
    model, project, process_id, subprocess_id, status, front, endpoint, upstream, key = dims
    return Dist(
        model=model,
        project=project,
        process_id=process_id,
        subprocess_id=subprocess_id,
        status=status,
        front=front,
        endpoint=endpoint,
        upstream=upstream,
        key_label=key,
    )


def aggregate(records: Iterable[Measured], bucket_seconds: int) -> tuple[list[Cell], list[Dist]]:
    """The cells (per bucket_seconds) and the histograms of these records."""
    cells: dict[tuple[int, DimsKey], Cell] = {}
    dists: dict[DimsKey, Dist] = {}
    for record in records:
        dims: DimsKey = (
            record.model_name,
            record.project,
            record.process_id,
            record.subprocess_id,
            record.status,
            record.front,
            record.endpoint,
            record.upstream,
            record.key_label,
        )
        start = record_start(record, bucket_seconds)
        cell = cells.get((start, dims))
        if cell is None:
            cell = cells[start, dims] = _cell(start, dims)
        cell.add(record)
        dist = dists.get(dims)
        if dist is None:
            dist = dists[dims] = _dist(dims)
        dist.add(record)
    return list(cells.values()), list(dists.values())


class _Group:
    __slots__ = (
        "calls",
        "cost",
        "errors",
        "eval_seconds",
        "eval_tokens",
        "gpu",
        "gpu_load",
        "input",
        "model",
        "output",
        "seconds",
        "seconds_hist",
        "ttft_hist",
    )

    def __init__(self) -> None:
        self.calls = self.errors = self.input = self.output = self.eval_tokens = 0
        self.model = self.eval_seconds = self.seconds = 0.0
        self.gpu = self.gpu_load = self.cost = 0.0
        self.seconds_hist: dict[int, int] = {}
        self.ttft_hist: dict[int, int] = {}

    def add(self, cell: Cell) -> None:
        self.calls += cell.calls
        self.errors += cell.calls if cell.status == "error" else 0
        self.input += cell.input_tokens
        self.output += cell.output_tokens
        self.model += cell.upstream_seconds
        self.seconds += cell.total_seconds
        self.eval_seconds += cell.eval_seconds
        self.eval_tokens += cell.eval_tokens
        self.gpu += cell.gpu_seconds
        self.gpu_load += cell.gpu_load_seconds
        self.cost += cell.cost

    def row(self, key: str) -> GroupStats:
        return GroupStats(
            key=key,
            calls=self.calls,
            input_tokens=self.input,
            output_tokens=self.output,
            total_seconds=round(self.seconds, 6),
            model_seconds=round(self.model, 6),
            errors=self.errors,
            p50_seconds=hist_percentile(self.seconds_hist, 0.50),
            p95_seconds=hist_percentile(self.seconds_hist, 0.95),
            p50_ttft_seconds=hist_percentile(self.ttft_hist, 0.50),
            tokens_per_second=(
                round(self.eval_tokens / self.eval_seconds, 3) if self.eval_seconds else None
            ),
            gpu_seconds=round(self.gpu, 6),
            gpu_load_seconds=round(self.gpu_load, 6),
            cost=round(self.cost, 9),
        )


GROUPS = ("model", "project", "process", "front", "endpoint", "upstream", "key")


def _group_keys(dims: DimsKey) -> tuple[tuple[str, str], ...]:
    model, project, process, sub, _, front, endpoint, upstream, key = dims
    return (
        ("model", model or "-"),
        ("project", project or "-"),
        ("process", f"{process or '-'}/{sub or '-'}"),
        ("front", front or "-"),
        ("endpoint", endpoint or "-"),
        ("upstream", upstream or "-"),
        ("key", key or "-"),
    )


class StatsBuilder:
    """Folds cells and histograms into a Stats; each cell's start must fall inside
    one series bucket."""

    def __init__(self, bucket_seconds: int) -> None:
        self.bucket_seconds = bucket_seconds
        self.totals = Totals()
        self.buckets: dict[int, list[int]] = {}
        self.groups: dict[str, dict[str, _Group]] = {kind: {} for kind in GROUPS}
        # Histograms merge per combination first (few), then into the groups once.
        self.dists: dict[DimsKey, tuple[dict[int, int], dict[int, int]]] = {}

    def _group(self, kind: str, key: str) -> _Group:
        group = self.groups[kind].get(key)
        if group is None:
            group = self.groups[kind][key] = _Group()
        return group

    def add(self, cell: Cell) -> None:
        totals = self.totals
        totals.calls += cell.calls
        totals.input_tokens += cell.input_tokens
        totals.output_tokens += cell.output_tokens
        totals.model_seconds += cell.upstream_seconds
        totals.gpu_seconds += cell.gpu_seconds
        totals.gpu_load_seconds += cell.gpu_load_seconds
        totals.cost += cell.cost
        if cell.status == "error":
            totals.errors += cell.calls
        elif cell.status == "cancelled":
            totals.cancelled += cell.calls
        start = cell.start - cell.start % self.bucket_seconds
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = [0, 0, 0]
        bucket[0] += cell.calls
        bucket[1] += cell.input_tokens
        bucket[2] += cell.output_tokens
        for kind, key in _group_keys(dims_of(cell)):
            self._group(kind, key).add(cell)

    def add_dist(self, dist: Dist) -> None:
        dims = dims_of(dist)
        found = self.dists.get(dims)
        if found is None:
            self.dists[dims] = (dict(dist.seconds_hist), dict(dist.ttft_hist))
        else:
            _merge_hist(found[0], dist.seconds_hist)
            _merge_hist(found[1], dist.ttft_hist)

    def add_records(self, records: Iterable[Measured]) -> None:
        cells, dists = aggregate(records, self.bucket_seconds)
        for cell in cells:
            self.add(cell)
        for dist in dists:
            self.add_dist(dist)

    def build(self) -> Stats:
        totals = self.totals
        totals.model_seconds = round(totals.model_seconds, 6)
        totals.gpu_seconds = round(totals.gpu_seconds, 6)
        totals.gpu_load_seconds = round(totals.gpu_load_seconds, 6)
        totals.cost = round(totals.cost, 9)
        for dims, (seconds, ttft) in self.dists.items():
            for kind, key in _group_keys(dims):
                group = self._group(kind, key)
                _merge_hist(group.seconds_hist, seconds)
                _merge_hist(group.ttft_hist, ttft)

        def rows(kind: str) -> list[GroupStats]:
            found = [group.row(key) for key, group in self.groups[kind].items()]
            return sorted(found, key=lambda row: (-row.calls, row.key))

        return Stats(
            totals=self.totals,
            bucket_seconds=self.bucket_seconds,
            series=[
                Bucket(
                    start=iso(datetime.fromtimestamp(start, UTC)),
                    calls=c,
                    input_tokens=i,
                    output_tokens=o,
                )
                for start, (c, i, o) in sorted(self.buckets.items())
            ],
            by_model=rows("model"),
            by_project=rows("project"),
            by_process=rows("process"),
            by_front=rows("front"),
            by_endpoint=rows("endpoint"),
            by_upstream=rows("upstream"),
            by_key=rows("key"),
        )


def compute_stats(records: Iterable[Measured], bucket_seconds: int) -> Stats:
    """Stats over these records, straight from the records."""
    builder = StatsBuilder(bucket_seconds)
    builder.add_records(records)
    return builder.build()
