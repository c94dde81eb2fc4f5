"""Records and checks the store tests share (tests/test_store_tinydb_store.py and
tests/test_store_contract.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from store import InputMessage, Stats, UsageQuery, UsageRecord, UsageStore, iso
from store.stats import RATIO

BASE = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def record(n: int, *, at: datetime | None = None, **fields: object) -> UsageRecord:
    moment = at or BASE + timedelta(seconds=37 * n)
    values: dict[str, object] = {
        "id": f"{int(moment.timestamp() * 1e6):014x}{n:06x}",
        "date": iso(moment),
        "total_seconds": round(0.05 + (n * 7919 % 1000) / 200, 6),
        "total_tokens": 10 + n % 7,
        "input_tokens": 4 + n % 3,
        "output_tokens": 6 + n % 5,
        "model_name": ["llama3", "qwen", "mistral"][n % 3],
        "input": [InputMessage("user", f"question {n}")],
        "output": f"answer {n}",
        "project": f"p{n % 4}",
        "process_id": f"proc{n % 2}",
        "subprocess_id": None if n % 5 else "sub",
        "status": "ok" if n % 9 else ("error" if n % 2 else "cancelled"),
        "ttft_seconds": None if n % 6 == 0 else 0.01 * (1 + n % 13),
        "eval_seconds": 0.5 + n % 3,
        "upstream_seconds": 1.0 + n % 4,
    }
    values.update(fields)
    return msgspec.convert(values, UsageRecord)


def fill(store: UsageStore, records: list[UsageRecord]) -> None:
    for r in records:
        store.append(r)
    asyncio.run(store.flush())


def query(store: UsageStore, **fields: object) -> list[UsageRecord]:
    return asyncio.run(store.query(msgspec.convert(fields, UsageQuery)))


def stats(store: UsageStore, bucket: int, **fields: object) -> Stats:
    return asyncio.run(store.stats(msgspec.convert(fields, UsageQuery), bucket_seconds=bucket))


def newest_first(records: list[UsageRecord]) -> list[UsageRecord]:
    return sorted(records, key=lambda r: r.id, reverse=True)


def _exact(records: list[UsageRecord], bucket: int) -> dict[str, object]:
    """The figures stats() must get exactly right, computed the plain way."""
    series: dict[int, list[int]] = {}
    models: dict[str, list[float]] = {}
    for r in records:
        moment = int(datetime.fromisoformat(r.date).timestamp())
        row = series.setdefault(moment - moment % bucket, [0, 0, 0])
        row[0] += 1
        row[1] += r.input_tokens or 0
        row[2] += r.output_tokens or 0
        models.setdefault(r.model_name, []).append(r.total_seconds)
    return {
        "calls": len(records),
        "input": sum(r.input_tokens or 0 for r in records),
        "errors": sum(r.status == "error" for r in records),
        "cancelled": sum(r.status == "cancelled" for r in records),
        "series": [(iso(datetime.fromtimestamp(k, UTC)), *v) for k, v in sorted(series.items())],
        "models": {k: (len(v), round(sum(v), 6), sorted(v)) for k, v in models.items()},
    }


def check_stats(found: Stats, records: list[UsageRecord], bucket: int) -> None:
    """found is what stats() must say about these records (percentiles within a bucket)."""
    exact = _exact(records, bucket)
    assert found.totals.calls == exact["calls"]
    assert found.totals.input_tokens == exact["input"]
    assert found.totals.errors == exact["errors"]
    assert found.totals.cancelled == exact["cancelled"]
    assert [(b.start, b.calls, b.input_tokens, b.output_tokens) for b in found.series] == exact[
        "series"
    ]
    models = exact["models"]
    assert isinstance(models, dict)
    assert {row.key for row in found.by_model} == set(models)
    for row in found.by_model:
        calls, total, values = models[row.key]
        assert row.calls == calls
        assert row.total_seconds == pytest.approx(total, abs=1e-5)
        exact_p50 = values[int(0.5 * len(values))]
        assert row.p50_seconds == pytest.approx(exact_p50, rel=RATIO - 1)
