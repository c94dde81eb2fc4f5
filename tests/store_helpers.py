"""Records and checks the store tests share (tests/test_store_tinydb_store.py and
tests/test_store_contract.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
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
        # GPU time: most calls have some, every other is priced, every fourth loaded its model.
        "key_label": ["team", "batch", None, "admin", "team"][n % 5],
        "gpu_seconds": None if n % 7 == 0 else round(0.2 + (n * 31 % 100) / 50, 6),
        "load_seconds": 0.75 if n % 4 == 0 else None,
        "prompt_eval_seconds": 0.25,
    }
    gpu = values["gpu_seconds"]
    if isinstance(gpu, float) and n % 2 == 0:
        values["cost"] = round(gpu * 2.5 / 3600, 9)
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
        "gpu": sum(r.gpu_seconds or 0 for r in records),
        "cost": sum(r.cost or 0 for r in records),
        "gpu_by_key": _sums((r.key_label or "-", r.gpu_seconds or 0) for r in records),
        "gpu_by_upstream": _sums((r.upstream or "-", r.gpu_seconds or 0) for r in records),
    }


def _sums(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    found: dict[str, float] = {}
    for key, value in pairs:
        found[key] = found.get(key, 0.0) + value
    return found


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
    # GPU time, its cost, and who used it on which upstream.
    assert found.totals.gpu_seconds == pytest.approx(exact["gpu"], abs=1e-5)
    assert found.totals.cost == pytest.approx(exact["cost"], abs=1e-8)
    if any(r.gpu_seconds and r.load_seconds for r in records):
        assert 0 < found.totals.gpu_load_seconds < found.totals.gpu_seconds
    assert {row.key: row.gpu_seconds for row in found.by_key} == pytest.approx(exact["gpu_by_key"])
    assert {row.key: row.gpu_seconds for row in found.by_upstream} == pytest.approx(
        exact["gpu_by_upstream"]
    )
    models = exact["models"]
    assert isinstance(models, dict)
    assert {row.key for row in found.by_model} == set(models)
    for row in found.by_model:
        calls, total, values = models[row.key]
        assert row.calls == calls
        assert row.total_seconds == pytest.approx(total, abs=1e-5)
        exact_p50 = values[int(0.5 * len(values))]
        assert row.p50_seconds == pytest.approx(exact_p50, rel=RATIO - 1)
