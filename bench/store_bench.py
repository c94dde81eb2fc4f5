"""The usage store against TinyDB's default storage, in one run, as one table.

    .venv/bin/python -m bench.store_bench            # about 4 minutes, 3 GB of temp files
    .venv/bin/python -m bench.store_bench --help

It writes 1M realistic records (about 1.2 KB each) straight into the store's
on-disk format (the same TinyDB files, summaries and rows the store writes), then:
appends 50,000 records to the store with 0, 100k and 1M records already stored
(median of 3 runs); opens the 1M store in a fresh process to time startup and
measure its memory; runs the dashboard's newest-100 query and stats(). TinyDB's
default storage gets the same appends for as long as a budget allows (one insert
at 1M would parse and rewrite a 1.7 GB file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from tinydb import TinyDB

from store import InputMessage, TinyDBStore, UsageQuery, UsageRecord, UsageStore, iso
from store.tinydb import files
from store.tinydb.store import SEGMENT_RECORDS

PROJECTS = [f"project-{n}" for n in range(8)]
RARE = "project-rare"  # one record in a thousand
MODELS = ["llama3.2:3b", "qwen2.5:7b", "mistral:7b"]
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
]


def _text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


class Maker:
    """Realistic records, fast: a pool of texts reused, ids and dates increasing."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.prompts = [_text(self.rng, 600) for _ in range(64)]
        self.answers = [_text(self.rng, 400) for _ in range(64)]

    def record(self, moment: datetime, n: int) -> UsageRecord:
        rng = self.rng
        project = RARE if n % 1000 == 999 else PROJECTS[n % len(PROJECTS)]
        status = "ok" if n % 50 else ("error" if n % 100 else "cancelled")
        us = int(moment.timestamp() * 1_000_000)
        return UsageRecord(
            id=f"{us:014x}{n & 0xFFFFFF:06x}",
            date=iso(moment),
            total_seconds=round(rng.lognormvariate(0.0, 0.8), 6),
            total_tokens=180,
            input_tokens=120,
            output_tokens=60,
            model_name=MODELS[n % 3],
            input=[InputMessage("user", self.prompts[n % 64])],
            output=self.answers[n % 64],
            project=project,
            process_id=f"worker-{n % 4}",
            subprocess_id=None,
            status=status,  # type: ignore[arg-type]
            streamed=bool(n % 2),
            ttft_seconds=round(rng.uniform(0.05, 0.4), 6),
            eval_seconds=1.2,
            upstream_seconds=1.5,
        )

    def live(self, n: int) -> UsageRecord:
        return self.record(datetime.now(UTC), n)


def generate(usage: Path, maker: Maker, start: int, count: int, total: int) -> None:
    """Records start..start+count of `total` spread over the last 30 days, as closed files."""
    usage.mkdir(parents=True, exist_ok=True)
    (usage / files.INDEX).mkdir(exist_ok=True)
    first = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / total
    seq_of_day: dict[str, int] = {}
    for chunk in range(start, start + count, SEGMENT_RECORDS):
        size = min(SEGMENT_RECORDS, start + count - chunk)
        records = [maker.record(first + step * n, n) for n in range(chunk, chunk + size)]
        day = records[0].date[:10]
        seq_of_day[day] = seq = seq_of_day.get(day, _last_seq(usage, day)) + 1
        lines = [files.encode(r) for r in records]
        files.write_segment(usage, files.segment_name(day, seq), records, lines)


def _last_seq(usage: Path, day: str) -> int:
    seqs = [files.segment_key(p.name)[1] for p in usage.glob(f"{day}-*.json")]
    return max(seqs, default=0)


def _scale(count: int) -> str:
    return f"{count / 1e6:g}M" if count >= 1_000_000 else f"{count / 1000:g}k"


def _pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Row(msgspec.Struct):
    what: str
    ours: str
    tinydb: str


def appends(store: UsageStore, records: list[UsageRecord]) -> tuple[float, float, float]:
    """Records/s appended and stored (final flush included); p50 and p99 of append() in µs."""
    latencies: list[float] = []
    clock = time.perf_counter_ns
    began = time.perf_counter()
    for record in records:
        t0 = clock()
        store.append(record)
        latencies.append((clock() - t0) / 1000)
    asyncio.run(store.flush())
    elapsed = time.perf_counter() - began
    return len(records) / elapsed, _pct(latencies, 0.5), _pct(latencies, 0.99)


def bench_appends(data: Path, maker: Maker, count: int) -> tuple[float, float, float]:
    """Appends/s (appended and durable in the TinyDB files), p50 and p99 append() in µs."""
    store = TinyDBStore(data)
    try:
        return appends(store, [maker.live(n) for n in range(count)])
    finally:
        store.close()


def median_of(
    runs: int, run: Callable[[int], tuple[float, float, float]]
) -> tuple[float, float, float]:
    """The run with the median throughput: the machine is shared and noisy."""
    results = sorted((run(n) for n in range(runs)), key=lambda result: result[0])
    return results[runs // 2]


def bench_tinydb(path: Path, maker: Maker, budget: float, most: int) -> tuple[int, float, float]:
    """Inserts done within the budget, p50 and p99 insert latency in ms."""
    table = TinyDB(path).table(files.TABLE)
    latencies: list[float] = []
    began = time.perf_counter()
    n = 0
    while n < most and time.perf_counter() - began < budget:
        doc = msgspec.to_builtins(maker.live(n))
        t0 = time.perf_counter()
        table.insert(doc)
        latencies.append((time.perf_counter() - t0) * 1000)
        n += 1
    return n, _pct(latencies, 0.5), _pct(latencies, 0.99)


def tinydb_file(path: Path, maker: Maker, count: int) -> None:
    """A TinyDB default-storage file holding `count` records (written directly)."""
    first = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / count
    lines = [files.encode(maker.record(first + step * n, n)) for n in range(count)]
    path.write_bytes(files.tinydb_bytes(lines))


def startup_probe(data: Path) -> None:
    """Run in a fresh process: open the store, print seconds taken and peak RSS in MB."""
    began = time.perf_counter()
    store = TinyDBStore(data)
    opened = time.perf_counter() - began
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
    status = Path("/proc/self/status").read_text().splitlines()
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    store.close()
    print(msgspec.json.encode({"seconds": opened, "rss_mb": rss}).decode())


def timed(run: Callable[[], int], times: int) -> tuple[float, float, int]:
    """First and median run, in ms, and how many records the run covered."""
    took: list[float] = []
    covered = 0
    for _ in range(times):
        t0 = time.perf_counter()
        covered = run()
        took.append((time.perf_counter() - t0) * 1000)
    return took[0], statistics.median(took), covered


def bench_reads(data: Path, scale: str) -> Iterator[tuple[str, str]]:
    store = TinyDBStore(data)

    def query(q: UsageQuery) -> Callable[[], int]:
        return lambda: len(asyncio.run(store.query(q)))

    def stats(q: UsageQuery, bucket: int) -> Callable[[], int]:
        return lambda: asyncio.run(store.stats(q, bucket_seconds=bucket)).totals.calls

    page = asyncio.run(store.query(UsageQuery(limit=100)))
    day = UsageQuery(since=datetime.now(UTC) - timedelta(days=1))
    cases = [
        ("newest 100, unfiltered", query(UsageQuery(limit=100)), 20),
        ("newest 100, project filter", query(UsageQuery(project=PROJECTS[3], limit=100)), 20),
        ("newest 100, rare project (0.1%)", query(UsageQuery(project=RARE, limit=100)), 5),
        ("next page by cursor", query(UsageQuery(before=page[-1].id, limit=100)), 20),
        ("stats, all, hourly buckets", stats(UsageQuery(), 3600), 3),
        ("stats, one project, daily buckets", stats(UsageQuery(project=PROJECTS[1]), 86400), 3),
        ("stats, last 24 h, 5-min buckets", stats(day, 300), 3),
    ]
    try:
        for label, run, times in cases:
            first, median, covered = timed(run, times)
            yield (
                f"{label} @{scale} (first / median)",
                f"{first:.1f} / {median:.1f} ms ({covered:,} records)",
            )
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000, help="history size (1M)")
    parser.add_argument("--appends", type=int, default=50_000, help="appends per measurement")
    parser.add_argument("--tinydb-budget", type=float, default=60.0, help="seconds for TinyDB")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temp folder, removed)")
    parser.add_argument("--startup-probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_probe:
        startup_probe(args.startup_probe)
        return 0
    work = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir))
    big, tenth = args.records, args.records // 10
    rows: list[Row] = []
    maker = Maker()
    try:
        budget = args.tinydb_budget
        # TinyDB's default storage, from empty, then with a tenth of the history stored.
        t0 = time.perf_counter()
        done, p50, p99 = bench_tinydb(work / "tiny0.json", maker, budget / 2, args.appends)
        tiny_empty = (done / (time.perf_counter() - t0), p50, p99, done)
        tinydb_file(work / "tiny100k.json", maker, tenth)
        t0 = time.perf_counter()
        done, p50, p99 = bench_tinydb(work / "tiny100k.json", maker, budget / 2, args.appends)
        tiny_tenth = (done / (time.perf_counter() - t0), p50, p99, done)
        (work / "tiny100k.json").unlink()

        t0 = time.perf_counter()
        ours0 = median_of(3, lambda n: bench_appends(work / f"empty{n}", maker, args.appends))
        generate(work / "big" / "usage", maker, 0, tenth, big)
        ours_tenth = median_of(3, lambda n: bench_appends(work / "big", maker, args.appends))
        generate(work / "big" / "usage", maker, tenth, big - tenth, big)
        generated = time.perf_counter() - t0
        ours_big = median_of(3, lambda n: bench_appends(work / "big", maker, args.appends))
        disk = sum(p.stat().st_size for p in (work / "big" / "usage").glob("*.json"))

        def tiny_cell(t: tuple[float, float, float, int]) -> str:
            rate, p50, p99, done = t
            shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"
            return f"{shown}/s; {p50:.2f} / {p99:.2f} ms ({done} inserts)"

        def ours_cell(t: tuple[float, float, float]) -> str:
            rate, p50, p99 = t
            return f"{rate:,.0f}/s; {p50:.1f} / {p99:.1f} µs"

        rows.append(
            Row("appends/s; p50 / p99 append, empty", ours_cell(ours0), tiny_cell(tiny_empty))
        )
        rows.append(Row(f"… with {tenth:,} stored", ours_cell(ours_tenth), tiny_cell(tiny_tenth)))
        rows.append(
            Row(
                f"… with {big:,} stored",
                ours_cell(ours_big),
                f"not attempted: each insert would parse and rewrite {disk / 1e9:.1f} GB",
            )
        )
        probe = subprocess.run(
            [sys.executable, "-m", "bench.store_bench", "--startup-probe", str(work / "big")],
            check=True,
            capture_output=True,
            text=True,
        )
        opened = msgspec.json.decode(probe.stdout.strip().splitlines()[-1])
        rows.append(
            Row(
                f"startup; peak RSS @{_scale(big + 6 * args.appends)}",
                f"{opened['seconds'] * 1000:.0f} ms; {opened['rss_mb']:.0f} MB",
                "n/a (reads the file on first use)",
            )
        )
        # The appends above added 6 runs of records to the history the reads see.
        for label, value in bench_reads(work / "big", _scale(big + 6 * args.appends)):
            rows.append(Row(label, value, "n/a"))
        print(
            f"\n{big:,} records generated in {generated:.0f} s, {disk / 1e9:.2f} GB of TinyDB files"
        )
        print(f"load: {os.getloadavg()[0]:.2f} (1-min average), {os.cpu_count()} CPUs\n")
        width = max(len(r.what) for r in rows)
        wo = max(len(r.ours) for r in rows)
        print(f"| {'measure':<{width}} | {'this store':<{wo}} | TinyDB default storage |")
        print(f"|{'-' * (width + 2)}|{'-' * (wo + 2)}|---|")
        for r in rows:
            print(f"| {r.what:<{width}} | {r.ours:<{wo}} | {r.tinydb} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
