"""Aggregates over usage records, computed in one pass over the matching records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .records import Bucket, GroupStats, Stats, Totals, iso


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(fraction * len(values)))]


class _Group:
    __slots__ = (
        "calls",
        "errors",
        "eval_seconds",
        "eval_tokens",
        "input",
        "model",
        "output",
        "seconds",
        "ttft",
    )

    def __init__(self) -> None:
        self.calls = self.errors = self.input = self.output = self.eval_tokens = 0
        self.model = self.eval_seconds = 0.0
        self.seconds: list[float] = []
        self.ttft: list[float] = []

    def add(self, doc: dict[str, Any]) -> None:
        self.calls += 1
        self.errors += doc.get("status") == "error"
        self.input += doc.get("input_tokens") or 0
        self.output += doc.get("output_tokens") or 0
        self.model += doc.get("upstream_seconds") or 0.0
        self.seconds.append(doc.get("total_seconds") or 0.0)
        if doc.get("ttft_seconds") is not None:
            self.ttft.append(doc["ttft_seconds"])
        if doc.get("eval_seconds") and doc.get("output_tokens") and not doc.get("tokens_estimated"):
            self.eval_seconds += doc["eval_seconds"]
            self.eval_tokens += doc["output_tokens"]

    def row(self, key: str) -> GroupStats:
        return GroupStats(
            key=key,
            calls=self.calls,
            input_tokens=self.input,
            output_tokens=self.output,
            total_seconds=round(sum(self.seconds), 6),
            model_seconds=round(self.model, 6),
            errors=self.errors,
            p50_seconds=_percentile(self.seconds, 0.50),
            p95_seconds=_percentile(self.seconds, 0.95),
            p50_ttft_seconds=_percentile(self.ttft, 0.50),
            tokens_per_second=(
                round(self.eval_tokens / self.eval_seconds, 3) if self.eval_seconds else None
            ),
        )


def compute_stats(docs: Iterable[dict[str, Any]], bucket_seconds: int) -> Stats:
    totals = Totals()
    buckets: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    groups: dict[str, dict[str, _Group]] = {"model": {}, "project": {}, "process": {}}
    for doc in docs:
        totals.calls += 1
        totals.input_tokens += doc.get("input_tokens") or 0
        totals.output_tokens += doc.get("output_tokens") or 0
        totals.model_seconds += doc.get("upstream_seconds") or 0.0
        totals.errors += doc.get("status") == "error"
        totals.cancelled += doc.get("status") == "cancelled"
        moment = int(datetime.fromisoformat(doc["date"]).timestamp())
        bucket = buckets[moment - moment % bucket_seconds]
        bucket[0] += 1
        bucket[1] += doc.get("input_tokens") or 0
        bucket[2] += doc.get("output_tokens") or 0
        process = f"{doc.get('process_id') or '-'}/{doc.get('subprocess_id') or '-'}"
        for kind, key in (
            ("model", doc.get("model_name") or "-"),
            ("project", doc.get("project") or "-"),
            ("process", process),
        ):
            group = groups[kind].get(key)
            if group is None:
                group = groups[kind][key] = _Group()
            group.add(doc)
    totals.model_seconds = round(totals.model_seconds, 6)

    def rows(kind: str) -> list[GroupStats]:
        found = [group.row(key) for key, group in groups[kind].items()]
        return sorted(found, key=lambda row: row.calls, reverse=True)

    return Stats(
        totals=totals,
        bucket_seconds=bucket_seconds,
        series=[
            Bucket(
                start=iso(datetime.fromtimestamp(start, UTC)),
                calls=c,
                input_tokens=i,
                output_tokens=o,
            )
            for start, (c, i, o) in sorted(buckets.items())
        ],
        by_model=rows("model"),
        by_project=rows("project"),
        by_process=rows("process"),
    )
