"""The benchmark harness itself, at toy size: it runs, and its counts add up.

Speed is measured by bench/gateway_bench.py, never asserted here; this only checks that the
harness works end to end (bench upstream, gateway, stream client, record checks), so that it
still does when someone needs the numbers.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

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
