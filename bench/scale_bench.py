"""The PostgreSQL store beside the TinyDB store, and --workers 2 against 1, in one run.

    .venv/bin/python -m bench.scale_bench              # about 8 minutes
    .venv/bin/python -m bench.scale_bench --quick      # a smoke run, under a minute

Needs the machine's PostgreSQL (BENCH_POSTGRES, default postgresql://postgres@127.0.0.1:5432/
postgres: a database of its own is made and dropped) and wrk (apt-get install wrk).

Stores: the same realistic records (bench/store_bench.py's Maker, about 1.2 KB each, over
30 days) go into each store. PostgreSQL gets them through the store's own append() (so the
fill itself measures sustained appends over 1M); TinyDB's files are written directly in its
format, as store_bench does. Then, on each: appends at 1M, the dashboard's newest-100
queries and stats(). The cost of the change-counter poll each gateway makes is measured too.

Gateway: non-streamed asks at c=64 (wrk) against the bench upstream, which shares core 0 with
wrk; the gateway processes get core 1, or both cores. PostgreSQL's own processes run wherever
the kernel puts them: on a 2-core machine everything competes, which is the point to see.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.gateway_bench import (
    _WRK_LUA,
    ADMIN_TOKEN,
    BENCH,
    PYTHON,
    free_port,
    parse_wrk,
    spawn,
    stop,
    wait_ready,
)
from bench.store_bench import MODELS, PROJECTS, RARE, Maker, appends, generate, median_of
from store import TinyDBStore, UsageQuery, UsageStore
from store.postgres import PostgresStore

ADMIN_DSN = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def database() -> Iterator[str]:
    name = f"oh_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def median_run(runs: int, run: Callable[[int], tuple[float, float, float]]) -> str:
    rate, p50, p99 = median_of(runs, run)
    return f"{rate:,.0f}/s; {p50:.1f} / {p99:.1f} µs"


def timed(run: Callable[[], int], times: int) -> str:
    took: list[float] = []
    covered = 0
    for _ in range(times):
        t0 = time.perf_counter()
        covered = run()
        took.append((time.perf_counter() - t0) * 1000)
    return f"{took[0]:.1f} / {statistics.median(took):.1f} ms ({covered:,} records)"


def reads(store: UsageStore) -> dict[str, str]:
    def query(q: UsageQuery) -> Callable[[], int]:
        return lambda: len(asyncio.run(store.query(q)))

    def stats(q: UsageQuery, bucket: int) -> Callable[[], int]:
        return lambda: asyncio.run(store.stats(q, bucket_seconds=bucket)).totals.calls

    page = asyncio.run(store.query(UsageQuery(limit=100)))
    day = UsageQuery(since=datetime.now(UTC) - timedelta(days=1))
    cases: list[tuple[str, Callable[[], int], int]] = [
        ("newest 100, unfiltered", query(UsageQuery(limit=100)), 20),
        ("newest 100, project filter", query(UsageQuery(project=PROJECTS[3], limit=100)), 20),
        ("newest 100, rare project (0.1%)", query(UsageQuery(project=RARE, limit=100)), 5),
        ("newest 100, one model", query(UsageQuery(model=MODELS[1], limit=100)), 20),
        ("newest 100, status error (1%)", query(UsageQuery(status="error", limit=100)), 5),
        ("next page by cursor", query(UsageQuery(before=page[-1].id, limit=100)), 20),
        ("stats, all, hourly buckets", stats(UsageQuery(), 3600), 3),
        ("stats, one project, daily buckets", stats(UsageQuery(project=PROJECTS[1]), 86400), 3),
        ("stats, last 24 h, 5-min buckets", stats(day, 300), 3),
    ]
    return {label: timed(run, times) for label, run, times in cases}


def poll_cost(dsn: str) -> str:
    """What one gateway's change-counter poll costs: one single-row read per 0.25 s."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        took: list[float] = []
        cpu0 = time.process_time()
        for _ in range(500):
            t0 = time.perf_counter()
            conn.execute("SELECT usage_changes FROM ollama_host.state").fetchone()
            took.append((time.perf_counter() - t0) * 1e6)
        cpu = (time.process_time() - cpu0) / 500 * 1e6
    p50 = statistics.median(took)
    return (
        f"{p50:.0f} µs a read ({cpu:.0f} µs of the gateway's CPU): {4 * p50 / 1e4:.3f}% of a core"
    )


def stores(args: argparse.Namespace, work: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    big = args.records
    maker = Maker()
    live = [maker.live(n) for n in range(args.appends)]
    first = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / big
    with database() as dsn:
        pg = PostgresStore(dsn)
        try:
            empty_pg = median_run(
                3, lambda n: appends(pg, [maker.live(n * 10**7 + i) for i in range(args.appends)])
            )
            # Making the records is not timed: it is this bench's work, not the store's, and
            # on 2 cores it competes with the writer for the GIL. Each chunk is made, then
            # appended and flushed under the clock.
            spent = 0.0
            chunk = 50_000
            for start in range(0, big, chunk):
                batch = [
                    maker.record(first + step * n, n) for n in range(start, min(big, start + chunk))
                ]
                began = time.perf_counter()
                for record in batch:
                    pg.append(record)
                asyncio.run(pg.flush())
                spent += time.perf_counter() - began
            fill = big / spent
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE ollama_host.usage")
                size = conn.execute("SELECT pg_total_relation_size('ollama_host.usage')").fetchone()
            full_pg = median_run(
                3,
                lambda n: appends(
                    pg, [maker.live(n * 10**7 + 10**6 + i) for i in range(args.appends)]
                ),
            )
            pg_reads = reads(pg)
            poll = poll_cost(dsn)
        finally:
            pg.close()
    generate(work / "tiny" / "usage", maker, 0, big, big)
    tiny = TinyDBStore(work / "tiny")
    try:
        full_tiny = median_run(
            3,
            lambda n: appends(
                tiny, [maker.live(n * 10**7 + 10**6 + i) for i in range(args.appends)]
            ),
        )
        tiny_reads = reads(tiny)
    finally:
        tiny.close()
    tiny_empty_store = TinyDBStore(work / "tiny-empty")
    try:
        empty_tiny = median_run(3, lambda n: appends(tiny_empty_store, live))
    finally:
        tiny_empty_store.close()
    scale = f"{big / 1e6:g}M" if big >= 10**6 else f"{big / 1000:g}k"
    rows.append(("appends/s; p50 / p99 append(), empty", empty_pg, empty_tiny))
    rows.append(
        (
            f"appends/s sustained while filling to {scale} (making them not timed)",
            f"{fill:,.0f}/s",
            "n/a (written directly)",
        )
    )
    rows.append((f"appends/s; p50 / p99 append(), {scale} stored", full_pg, full_tiny))
    size_text = f"{size[0] / 1e9:.2f} GB table + indexes" if size else "?"
    rows.append((f"size @{scale}", size_text, "see store_bench"))
    for label in pg_reads:
        rows.append((f"{label} @{scale}+ (first / median)", pg_reads[label], tiny_reads[label]))
    rows.append(("change-counter poll, per gateway", poll, "n/a (in-process counter)"))
    return rows


# -- the gateway at c=64 -----------------------------------------------------------------------


def gateway_run(
    args: argparse.Namespace,
    work: Path,
    upstream: str,
    name: str,
    flags: list[str],
    core: set[int],
) -> dict[str, Any]:
    port = free_port()
    argv = [PYTHON, "app.py", "--ollama", upstream, "--port", str(port), "--log-level", "warning"]
    argv += ["--data", str(work / f"data-{name}"), *flags]
    proc = spawn(argv, core, work / f"gateway-{name}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/health", f"the gateway ({name})")
        body = '{"agent":"llama3","content":"hello","project":"bench"}'
        script = work / "ask.lua"
        script.write_text(_WRK_LUA % (body, ""))
        target = url + "/api/v1/ai/ask_sync"
        load_core = {sorted(os.sched_getaffinity(0))[0]}

        def run(seconds: int) -> dict[str, Any]:
            argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", "--latency"]
            argv += ["--timeout", "10s", "-s", str(script), target]
            out = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                check=True,
                preexec_fn=lambda: os.sched_setaffinity(0, load_core),
            )
            # wrk ends a latency in seconds with a space ("1.86s "), which parse_wrk's
            # end-of-line anchor does not expect.
            return parse_wrk("\n".join(line.rstrip() for line in out.stdout.splitlines()), target)

        run(1)  # warm up
        return run(args.seconds)
    finally:
        stop(proc)


def gateways(args: argparse.Namespace, work: Path) -> list[tuple[str, str]]:
    available = sorted(os.sched_getaffinity(0))
    load_core = {available[0]}
    gateway_core = {available[-1]}
    both = set(available)
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    upstream = spawn(
        [PYTHON, str(BENCH / "upstream.py"), "--port", str(port)], load_core, work / "upstream.log"
    )
    rows: list[tuple[str, str]] = []
    try:
        wait_ready(upstream, upstream_url + "/api/version", "the bench upstream")
        with database() as dsn:
            configs = [
                ("TinyDB, 1 process, core 1", [], gateway_core),
                ("PostgreSQL, --workers 1, core 1", ["--store", dsn], gateway_core),
                (
                    "PostgreSQL, --workers 2, core 1",
                    ["--store", dsn, "--workers", "2"],
                    gateway_core,
                ),
                ("TinyDB, 1 process, both cores", [], both),
                ("PostgreSQL, --workers 1, both cores", ["--store", dsn], both),
                ("PostgreSQL, --workers 2, both cores", ["--store", dsn, "--workers", "2"], both),
            ]
            # Rounds interleave the configurations, so that a burst of load elsewhere on the
            # machine does not land on one of them only; the median round is reported.
            results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in configs}
            for round_ in range(args.rounds):
                for n, (label, flags, core) in enumerate(configs):
                    result = gateway_run(args, work, upstream_url, f"g{round_}-{n}", flags, core)
                    results[label].append(result)
                    print(f"  round {round_ + 1}, {label}: {result['rps']:,.0f}/s", flush=True)
            for label, _, _ in configs:
                runs = sorted(results[label], key=lambda r: r["rps"])
                mid = runs[len(runs) // 2]
                spread = f"{runs[0]['rps']:,.0f}-{runs[-1]['rps']:,.0f}"
                rows.append(
                    (
                        label,
                        f"{mid['rps']:,.0f} ({spread}) | {mid['p50']:.1f} | {mid['p99']:.1f} | "
                        f"{sum(r['non2xx'] for r in runs)}",
                    )
                )
    finally:
        stop(upstream)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    parser.add_argument("--records", type=int, help="history size (default 1M)")
    parser.add_argument("--appends", type=int, help="appends per measurement (default 50k)")
    parser.add_argument("--seconds", type=int, help="wrk seconds per point (default 10)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, help="rounds of the gateway runs (default 3)")
    parser.add_argument("--only", choices=["stores", "gateway"], action="append")
    args = parser.parse_args(argv)
    defaults = (
        {"records": 20_000, "appends": 5_000, "seconds": 1, "rounds": 1}
        if args.quick
        else {"records": 1_000_000, "appends": 50_000, "seconds": 10, "rounds": 3}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    only = args.only or ["stores", "gateway"]
    if "gateway" in only and shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    os.environ["OLLAMA_GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN
    work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    try:
        if "stores" in only:
            rows = stores(args, work)
            width = max(len(r[0]) for r in rows)
            wide = max(len(r[1]) for r in rows)
            print(f"| {'measure':<{width}} | {'PostgreSQL':<{wide}} | TinyDB |")
            print(f"|{'-' * (width + 2)}|{'-' * (wide + 2)}|---|")
            for what, ours, theirs in rows:
                print(f"| {what:<{width}} | {ours:<{wide}} | {theirs} |")
            print()
        if "gateway" in only:
            print(f"Non-streamed asks at c={args.connections}, {args.seconds} s each:")
            lines = gateways(args, work)
            print("\n| gateway | req/s, median round (all rounds) | p50 ms | p99 ms | non-2xx |")
            print("|---|---|---|---|---|")
            for label, cells in lines:
                print(f"| {label} | {cells} |")
        load = os.getloadavg()
        print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
