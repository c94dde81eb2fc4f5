"""The benchmark harness itself, at toy size: it runs, and its counts add up.

Speed is measured by bench/gateway_bench.py, never asserted here; this only checks that the
harness works end to end (bench upstream, gateway, stream client, record checks), so that it
still does when someone needs the numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from bench.gateway_bench import parse_wrk
from tests.gateway_proc import ROOT

pytestmark = pytest.mark.server


def test_quick_bench_streams_and_cancellation_add_up() -> None:
    argv = [sys.executable, str(ROOT / "bench" / "gateway_bench.py"), "--quick"]
    argv += ["--only", "streams", "--only", "cancel", "--streams", "5", "--cancel", "5"]
    argv += ["--ttft", "3", "--stream-seconds", "0.3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert done.returncode == 0, done.stdout + done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| 5 |")][-1:]
    assert row.endswith("| ok |"), row
    assert "5/5 upstream connections closed" in done.stdout
    assert "5/5 records say `cancelled`" in done.stdout


def test_quick_bench_runs_with_the_line_store_too() -> None:
    argv = [sys.executable, str(ROOT / "bench" / "gateway_bench.py"), "--quick", "--store", "lines"]
    argv += ["--only", "streams", "--streams", "5", "--ttft", "3", "--stream-seconds", "0.3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert done.returncode == 0, done.stdout + done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| 5 |")][-1:]
    assert row.endswith("| ok |"), row


def test_quick_scale_bench_measures_both_stores() -> None:
    from tests import pg

    pg.require()
    argv = [sys.executable, "-m", "bench.scale_bench", "--quick", "--only", "stores"]
    argv += ["--records", "2000", "--appends", "500"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)

    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| stats, all")]
    assert len(rows) == 1, done.stdout
    # Every record appended is counted: the history and six runs of appends in PostgreSQL,
    # the history and three in TinyDB.
    assert "(5,000 records)" in rows[0]
    assert "(3,500 records)" in rows[0]


def test_quick_scale_bench_measures_the_gateways_too() -> None:
    # The --workers half: six gateways (TinyDB, PostgreSQL with one and two workers, on one
    # core and on both) under wrk. It broke once, unnoticed, when the wrk script gained a
    # placeholder; every row must come back with its numbers.
    from tests import pg

    pg.require()
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing (scripts/test installs it: apt-get install wrk)")
        pytest.skip("wrk is not installed (apt-get install wrk)")
    argv = [sys.executable, "-m", "bench.scale_bench", "--quick", "--only", "gateway"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)

    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| PostgreSQL, --w")]
    assert len(rows) == 4, done.stdout
    assert all(row.endswith("| 0 |") for row in rows), done.stdout  # no non-2xx


WRK_REPORT = """Running 5s test @ http://127.0.0.1:5000/api/v1/ai/ask_sync
  1 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    94.07ms   41.86ms    1.02s    84.50%
    Req/Sec     2.74k   817.67     3.73k    71.99%
  Latency Distribution
     50%   82.68ms
     75%  118.16ms
     90%  149.98ms
     99%    1.02s
  13605 requests in 5.01s, 2.30MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   2715.92
Transfer/sec:    469.45KB
"""


def test_wrk_percentiles_are_read_from_the_distribution_not_the_stdev_column() -> None:
    parsed = parse_wrk(WRK_REPORT)

    assert parsed["p50"] == 82.68
    assert parsed["p99"] == 1020.0
    assert parsed["rps"] == 2715.92
    assert (parsed["requests"], parsed["non2xx"]) == (13605, 3)


def test_wrk_percentiles_in_seconds_carry_a_trailing_space() -> None:
    # wrk pads "1.89s" to the width of "1.89ms": the line ends in a space.
    report = WRK_REPORT.replace("     99%    1.02s\n", "     99%    2.61s \n")
    assert report != WRK_REPORT

    assert parse_wrk(report)["p99"] == 2610.0


def test_the_fairness_bench_runs_and_reads_the_queues_wait() -> None:
    # It broke once, unnoticed, when Server-Timing gained the gateway's and the upstream's
    # parts beside the queue's: it read the whole header as the queue's figure.
    argv = [sys.executable, str(ROOT / "bench" / "fairness.py"), "--seconds", "0.2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)

    assert done.returncode == 0, done.stdout + done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| interactive ask's")]
    _fair, fifo = (float(cell) for cell in row.strip("| ").split(" | ")[1:])
    # First in, first out, the ask waits behind the batch key's 198 (0: the header unread).
    assert fifo > 0, row
