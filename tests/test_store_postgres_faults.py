"""The PostgreSQL store under faults: records it cannot write, a database that answers nothing,
a stop during an outage, a kill -9 while records wait, and their import.

Against the machine's real server, each test in a database of its own (tests/pg.py); outages
and a hung server through a TCP proxy (tests/tcp_proxy.py). Spills land in the session's own
spill folder (the `spill_folder` fixture).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from store import UsageStore, open_store, writer
from store.postgres import database as pg
from store.postgres import pending
from store.postgres import store as pg_store
from store.spill import read_spill
from tests import pg as testpg
from tests.gateway_proc import ROOT, start_gateway
from tests.helpers import ask
from tests.ollama_standin import StandIn
from tests.store_helpers import fill, newest_first, query, record
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.faults]

SYNC = "/api/v1/ai/ask_sync"
JSON_REPLY = {"Accept": "application/json"}


@pytest.fixture
def spills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own spill folder."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "ollama-host" / "spill"


def through(dsn: str, proxy: TcpProxy) -> str:
    return testpg.dsn_of(dsn.rsplit("/", 1)[1], port=proxy.port)


def eventually(done: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def count(dsn: str) -> int:
    value = testpg.scalar(dsn, "SELECT count(*) FROM ollama_host.usage")
    assert isinstance(value, int)
    return value


def close(store: UsageStore) -> None:
    asyncio.run(store.aclose())


def spilled(folder: Path) -> list[str]:
    """The ids of the records in the spill files (not the live files of pending records)."""
    files = sorted(folder.glob("usage-*.jsonl"))
    return sorted(r.id for r in read_spill(files).records)


def import_spill(folder: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    files = [str(path) for path in sorted(folder.glob("usage-*.jsonl"))]
    argv = [sys.executable, "-m", "ollama_host", "import-spill", *files, "--store", dsn]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


# -- records the database will not take (6.1, 6.2) ---------------------------------------------


def test_a_count_past_64_bits_is_spilled_and_the_writer_goes_on(
    dsn: str, spills: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(dsn)
    try:
        absurd = record(1, output_tokens=2**63, total_tokens=2**63 + 5)
        with caplog.at_level(logging.ERROR):
            fill(store, [record(0), absurd, record(2)])
            fill(store, [record(3)])  # the writer still writes
        health = store.health()
        found = query(store, limit=100)
    finally:
        close(store)

    assert found == newest_first([record(0), record(2), record(3)])
    assert health.status == "degraded"
    assert health.error is not None
    assert "past a 64-bit integer" in health.error
    assert str(spills) in health.error
    assert spilled(spills) == [absurd.id]
    assert "USAGE RECORDS SPILLED" in caplog.text


def test_an_hourly_sum_that_overflows_spills_the_record_and_says_so(dsn: str, spills: Path) -> None:
    store = open_store(dsn)
    try:
        fill(store, [record(0)])
        # The hour's sum for these labels is near the top of a bigint (as one absurd count
        # left it, before counts were bounded): the next record of the hour overflows it.
        testpg.execute(
            dsn, "UPDATE ollama_host.usage_hourly SET input_tokens = 9223372036854775805"
        )
        zero = record(0)
        same = record(
            3,
            project=zero.project,
            process_id=zero.process_id,
            subprocess_id=zero.subprocess_id,
            status=zero.status,
            key_label=zero.key_label,
        )  # the same labels and hour as record(0): the same hourly row
        fill(store, [same])
        health = store.health()
    finally:
        close(store)

    assert count(dsn) == 1
    assert health.status == "degraded"
    assert health.error is not None
    assert "bigint out of range" in health.error
    assert spilled(spills) == [same.id]

    # Once the cause is fixed, the import brings it back, once.
    testpg.execute(dsn, "UPDATE ollama_host.usage_hourly SET input_tokens = 4")
    first, again = import_spill(spills, dsn), import_spill(spills, dsn)
    assert first.returncode == 0, first.stderr
    assert "imported 1 usage records" in first.stdout
    assert again.returncode == 0, again.stderr
    assert "imported 0 usage records" in again.stdout
    assert count(dsn) == 2


def test_a_usage_table_replaced_by_another_application_spills_every_record(
    dsn: str, spills: Path
) -> None:
    store = open_store(dsn)
    try:
        testpg.execute(
            dsn,
            "ALTER TABLE ollama_host.usage RENAME TO usage_ours; "
            "CREATE TABLE ollama_host.usage (theirs int)",
        )
        records = [record(n) for n in range(40)]
        fill(store, records)
        health = store.health()
    finally:
        close(store)

    assert health.status == "degraded"
    assert health.error is not None
    assert "refused 40 usage records" in health.error
    assert spilled(spills) == sorted(r.id for r in records)
    assert testpg.column(dsn, "SELECT count(*) FROM ollama_host.usage") == [0]


# -- a database that answers nothing (6.3) -----------------------------------------------------


def test_a_silent_database_is_degraded_reads_fail_and_a_stop_spills_in_time(
    dsn: str, proxy: TcpProxy, spills: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short bounds, so the test is quick: the defaults are in store/postgres/.
    monkeypatch.setattr(pg, "OPERATION_SECONDS", 2.0)
    monkeypatch.setattr(pg, "POLL_SECONDS", 2.0)
    monkeypatch.setattr(pg_store, "STALL_SECONDS", 1.0)
    monkeypatch.setattr(pg_store, "CLOSE_WAIT", 2.0)
    store = open_store(through(dsn, proxy))
    try:
        fill(store, [record(n) for n in range(5)])
        proxy.hang()
        waiting = [record(n) for n in range(5, 55)]
        for r in waiting:
            store.append(r)
        eventually(lambda: store.health().status == "degraded", "health says degraded")
        health = store.health()
        with pytest.raises(pg_store.StoreUnavailable) as failed:
            query(store)
    finally:
        started = time.monotonic()
        close(store)
        stopped = time.monotonic() - started

    assert health.error is not None
    assert f"127.0.0.1:{proxy.port}" in health.error
    assert "did not answer within" in health.error or "has completed for" in health.error
    assert f"127.0.0.1:{proxy.port}" in str(failed.value)
    # The stop waited its CLOSE_WAIT, not for the database (a bound, not a measurement).
    assert stopped < 2.0 + 5.0
    assert spilled(spills) == sorted(r.id for r in waiting)
    assert count(dsn) == 5
    done = import_spill(spills, dsn)
    assert done.returncode == 0, done.stderr
    assert count(dsn) == 55


# -- a stop during an outage, and kill -9 (6.8) ------------------------------------------------


def test_a_stop_during_an_outage_spills_what_waits_and_the_import_takes_it_back(
    dsn: str, proxy: TcpProxy, spills: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(through(dsn, proxy))
    try:
        fill(store, [record(0)])
        proxy.cut()
        waiting = [record(n) for n in range(1, 31)]
        for r in waiting:
            store.append(r)
    finally:
        with caplog.at_level(logging.ERROR):
            close(store)

    assert "USAGE RECORDS SPILLED: 30 records" in caplog.text
    assert "import-spill" in caplog.text
    assert "USAGE RECORDS LOST" not in caplog.text
    assert spilled(spills) == sorted(r.id for r in waiting)
    assert list(spills.glob("pending-*")) == []
    done = import_spill(spills, dsn)
    assert done.returncode == 0, done.stderr
    assert "imported 30 usage records" in done.stdout
    store = open_store(dsn)
    try:
        assert query(store, limit=100) == newest_first([record(0), *waiting])
    finally:
        close(store)


KILLED = """
import os, signal, sys, time
from store import open_store
from tests.store_helpers import record
store = open_store(sys.argv[1])
print("opened", flush=True)
sys.stdin.readline()  # the outage has begun
for n in range(200):
    store.append(record(n))
time.sleep(1.0)  # the records wait for the database, and reach the file of pending records
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_records_waiting_at_a_kill_are_found_by_the_next_start_and_imported(
    dsn: str, proxy: TcpProxy, spills: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", KILLED, through(dsn, proxy)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stdout.readline() == "opened\n"
        proxy.cut()
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    with caplog.at_level(logging.ERROR):
        close(open_store(dsn))

    assert "USAGE RECORDS SPILLED: a gateway was stopped (killed) before PostgreSQL took 200" in (
        caplog.text
    )
    assert spilled(spills) == sorted(record(n).id for n in range(200))
    done = import_spill(spills, dsn)
    assert done.returncode == 0, done.stderr
    assert count(dsn) == 200
    assert pending.left_behind() == []


# -- small ones (6.10) -------------------------------------------------------------------------


def test_records_dropped_for_a_full_queue_name_the_bound_and_health_recovers(
    dsn: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "MAX_PENDING", 5)
    store = open_store(through(dsn, proxy))
    try:
        proxy.cut()
        for n in range(8):
            store.append(record(n))
        away = store.health()
        proxy.restore()
        eventually(lambda: store.health().pending == 0, "the held records are written")
        after = store.health()
        monkeypatch.setattr(writer, "DROPPED_NOTICE", 0.0)
        later = store.health()
    finally:
        close(store)

    assert away.error is not None
    assert "3 usage records dropped" in away.error
    assert "5 records already waited for the database" in away.error
    assert after.status == "degraded"  # for a while: a dashboard must be able to see it
    assert after.error is not None
    assert "cannot reach" not in after.error  # the database is back: not blamed
    assert (later.status, later.error) == ("ok", None)
    assert count(dsn) == 5


# -- the same through a gateway process, stopped with SIGTERM (6.3, 6.8) ---------------------


@pytest.mark.server
def test_a_gateway_on_a_silent_database_is_degraded_and_stops_within_its_grace(
    dsn: str, proxy: TcpProxy, standin: StandIn, tmp_path: Path
) -> None:
    spill_dir = tmp_path / "state" / "ollama-host" / "spill"
    gateway = start_gateway(
        tmp_path / "data",
        "--store",
        through(dsn, proxy),
        "--ollama",
        standin.url,
        "--grace",
        "1",
        env={"XDG_STATE_HOME": str(tmp_path / "state")},
    )
    try:
        with gateway.client() as client:
            for _n in range(3):
                answer = client.post(SYNC, json=ask(project="before"), headers=JSON_REPLY)
                assert answer.status_code == 200, answer.text
            eventually(lambda: count(dsn) == 3, "the first records are written")
            proxy.hang()
            for _n in range(20):
                answer = client.post(SYNC, json=ask(project="during"), headers=JSON_REPLY)
                assert answer.status_code == 200, answer.text
            eventually(
                lambda: client.get("/health").json()["store"]["status"] == "degraded",
                "health says the store is degraded",
            )
            health = client.get("/health").json()["store"]
            read = client.get("/api/v1/admin/stats")
        gateway.signal(signal.SIGTERM)
        # Within its grace (1 s), uvicorn's margin and the store's CLOSE_WAIT: far less than
        # systemd's TimeoutStopSec (grace + 10 s) gives it before SIGKILL.
        returncode = gateway.wait(timeout=1 + 4 + pg_store.CLOSE_WAIT + 5)
    finally:
        gateway.stop()
    logs = gateway.logs()

    assert returncode in (0, -signal.SIGTERM), logs
    assert health["pending"] >= 20
    assert f"127.0.0.1:{proxy.port}" in health["error"]
    assert read.status_code == 503, read.text
    assert "USAGE RECORDS SPILLED: 20 records" in logs
    assert "Traceback" not in logs
    assert len(spilled(spill_dir)) == 20
    done = import_spill(spill_dir, dsn)
    assert done.returncode == 0, done.stderr
    assert count(dsn) == 23


def test_a_key_change_on_a_silent_database_fails_in_time(
    dsn: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from access.keys import KeyLimits
    from calls.errors import CallError

    monkeypatch.setattr(pg, "OPERATION_SECONDS", 1.0)
    access, _ = testpg.access_of(through(dsn, proxy), "token")
    try:
        asyncio.run(access.keys.create("first", None, KeyLimits()))  # its connection is open
        proxy.hang()
        with pytest.raises(CallError) as refused:
            asyncio.run(access.keys.create("late", None, KeyLimits()))
    finally:
        access.close()

    assert refused.value.status == 503
    assert "did not answer within 1 s" in refused.value.message
