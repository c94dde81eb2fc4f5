"""The store's promises, kept by the real gateway process: kill -9, clean stops,
a full disk, damaged files, and a second gateway on the same folder.

The tests marked `faults` are rows of the fault catalogue (see tests/test_faults.py).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tinydb import TinyDB

from routes.request_id import new_id
from store import InputMessage, TinyDBStore, UsageRecord, iso, spill
from store.tinydb import files
from store.tinydb import store as usage_store
from tests import disks
from tests.gateway_proc import ROOT, Gateway, start_gateway
from tests.helpers import ask, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server

PROMISE_SECONDS = 1.0
# The catalogue ran 20 kill -9 cycles; 5 keep the suite short and still kill at 5 random
# moments under load.
KILL_CYCLES = 5


class Load:
    """Clients asking through the gateway until stopped; remembers when each answer ended."""

    def __init__(self, gateway: Gateway, project: str, clients: int = 4) -> None:
        self.project = project
        self.finished: dict[str, float] = {}  # call id -> monotonic time its response ended
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(gateway.url, n)) for n in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str, n: int) -> None:
        body = ask(content="go [[tokens=3]]", project=self.project, process_id=f"client{n}")
        headers = {"Accept": "application/json"}
        with httpx.Client(base_url=url, timeout=10.0, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/api/v1/ai/ask_sync", json=body, headers=headers)
                except httpx.TransportError:
                    return  # the gateway is gone
                ended = time.monotonic()
                if response.status_code == 200:
                    with self._lock:
                        self.finished[response.json()["id"]] = ended

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def on_disk(data: Path) -> set[str]:
    """Ids in the journal's whole lines and in the TinyDB files (each opened by plain TinyDB).

    The journal is read first: a gateway still running may fold records from it into a
    file meanwhile, and a record that left the journal is in a file by then.
    """
    ids: set[str] = set()
    usage = data / "usage"
    journal = usage / files.JOURNAL
    if journal.exists():
        lines = journal.read_bytes().split(b"\n")
        lines.pop()  # empty, or a line the kill cut short: never acknowledged as written
        ids.update(files.decode_line(line).id for line in lines)
    for path in usage.glob("*.json"):
        with TinyDB(path, access_mode="r") as db:
            ids.update(str(doc["id"]) for doc in db.table("usage").all())
    return ids


def dashboard_ids(gateway: Gateway, project: str, limit: int = 1000) -> set[str]:
    found: set[str] = set()
    params: dict[str, str | int] = {"project": project, "limit": limit}
    with gateway.client() as client:
        while True:
            page = client.get("/api/v1/admin/dashboard", params=params)
            assert page.status_code == 200, page.text
            found.update(r["id"] for r in page.json())
            if "x-next-cursor" not in page.headers:
                return found
            params["cursor"] = page.headers["x-next-cursor"]


@pytest.mark.faults
def test_kill_9_under_load_keeps_every_call_answered_a_second_before(
    standin: StandIn, data_dir: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    project = unique("crash")
    required: set[str] = set()
    answered = 0
    for _ in range(KILL_CYCLES):
        gateway = start_gateway(data_dir, "--ollama", standin.url)
        load = Load(gateway, project)
        time.sleep(rng.uniform(0.2, 2.5))  # a random moment under load, not a timing assertion
        killed_at = time.monotonic()
        gateway.signal(signal.SIGKILL)
        gateway.wait()
        load.stop()
        gateway.stop()
        # Straight after the kill, before any recovery: every file parses, nothing is missing.
        kept = on_disk(data_dir)
        promised = {i for i, ended in load.finished.items() if ended < killed_at - PROMISE_SECONDS}
        assert promised <= kept, f"seed {seed}: lost {len(promised - kept)} of {len(promised)}"
        required |= promised
        answered += len(load.finished)

    with start_gateway(data_dir, "--ollama", standin.url) as gateway:
        recovered = dashboard_ids(gateway, project)
    assert required, f"seed {seed}: no call finished a second before a kill"
    assert required <= recovered, f"seed {seed}: lost {len(required - recovered)} records"
    # A call in flight at a kill may count, no more.
    assert len(recovered) <= answered + KILL_CYCLES * 4
    assert "Traceback" not in gateway.logs()


def test_clean_stop_under_load_loses_nothing(standin: StandIn, data_dir: Path) -> None:
    project = unique("stop")
    gateway = start_gateway(data_dir, "--ollama", standin.url)
    load = Load(gateway, project)
    while len(load.finished) < 200:
        time.sleep(0.01)
    gateway.signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert gateway.wait() in (0, -signal.SIGTERM)
    load.stop()
    gateway.stop()

    kept = on_disk(data_dir)
    assert set(load.finished) <= kept
    assert not (data_dir / "usage" / files.JOURNAL).read_bytes()  # all folded into the files


@pytest.mark.faults
def test_a_second_gateway_on_the_same_folder_refuses_to_start(
    gateway: Gateway, standin: StandIn
) -> None:
    second = start_gateway(gateway.data, "--ollama", standin.url, wait=False)

    code = second.wait()
    second.stop()

    assert code == 1
    assert "another gateway is already using the data folder" in second.logs()
    assert "Traceback" not in second.logs()
    with gateway.client() as client:  # the first goes on as before
        assert client.get("/api/v1/admin/dashboard", params={"limit": 1}).status_code == 200


@pytest.mark.faults
def test_unreadable_file_at_startup_is_moved_aside_and_the_gateway_starts(
    standin: StandIn, data_dir: Path
) -> None:
    usage = data_dir / "usage"
    usage.mkdir(parents=True)
    (usage / "2026-01-05-0001.json").write_bytes(b'{"usage": {"1": {"id": "cut sho')

    with start_gateway(data_dir, "--ollama", standin.url) as gateway:
        health = httpx.get(gateway.url + "/health").json()

    assert health["store"]["status"] == "degraded"  # starts, but says a file was unreadable
    assert health["store"]["damaged"] == ["2026-01-05-0001.json"]
    [aside] = usage.glob("2026-01-05-0001.json.corrupt-*")
    assert aside.read_bytes() == b'{"usage": {"1": {"id": "cut sho'
    assert "USAGE FILE UNREADABLE" in gateway.logs()
    assert str(aside) in gateway.logs()


@pytest.mark.faults
def test_a_garbled_journal_is_moved_aside_and_its_good_lines_kept(
    standin: StandIn, data_dir: Path
) -> None:
    good = [_record(n) for n in range(3)]
    usage = data_dir / "usage"
    usage.mkdir(parents=True)
    garbled = files.encode(good[0]) + b"\n{not json\n" + files.encode(good[1]) + b"\n"
    garbled += b"\x00\xff\n" + files.encode(good[2]) + b"\n"
    (usage / files.JOURNAL).write_bytes(garbled)

    with start_gateway(data_dir, "--ollama", standin.url) as gateway:
        found = dashboard_ids(gateway, "p")
        health = httpx.get(gateway.url + "/health").json()

    assert found == {r.id for r in good}
    [aside] = usage.glob(f"{files.JOURNAL}.corrupt-*")
    assert aside.read_bytes() == garbled
    assert "USAGE FILE UNREADABLE" in gateway.logs()
    assert str(aside) in gateway.logs()
    assert health["store"]["status"] == "degraded"
    assert health["store"]["damaged"] == [files.JOURNAL]
    assert "Traceback" not in gateway.logs()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, mounted where the gateway keeps its data (root only)."""
    with disks.small_disk(tmp_path / "data") as mount:
        yield mount


def _until(gateway: Gateway, client: httpx.Client, status: str) -> None:
    """Keep calling until /health reports the store as `status` (or give up after 20 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        client.post("/api/v1/ai/ask_sync", json=ask(project="disk-poll"))
        if client.get("/health").json()["store"]["status"] == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"the store never became {status}:\n{gateway.logs()}")


@pytest.mark.faults
def test_full_disk_degrades_health_keeps_old_records_and_recovers(
    standin: StandIn, small_disk: Path
) -> None:
    project = unique("disk")
    body = ask(content="x [[tokens=3]]", project=project)
    headers = {"Accept": "application/json"}
    with start_gateway(small_disk, "--ollama", standin.url) as gateway, gateway.client() as client:
        before = {client.post("/api/v1/ai/ask_sync", json=body, headers=headers).json()["id"]}
        before |= {
            client.post("/api/v1/ai/ask_sync", json=body, headers=headers).json()["id"]
            for _ in range(30)
        }
        deadline = time.monotonic() + 10  # written within milliseconds; poll, do not assume
        while not before <= on_disk(small_disk):
            assert time.monotonic() < deadline, "the records never reached the disk"
            time.sleep(0.01)
        filler = disks.fill(small_disk)

        _until(gateway, client, "degraded")
        during = [client.post("/api/v1/ai/ask_sync", json=body, headers=headers) for _ in range(20)]
        degraded = client.get("/health").json()
        kept_while_full = on_disk(small_disk)
        filler.unlink()
        _until(gateway, client, "ok")
        after = {client.post("/api/v1/ai/ask_sync", json=body, headers=headers).json()["id"]}

    assert all(r.status_code == 200 for r in during)  # accounting never fails a call
    assert degraded["status"] == "degraded"
    assert degraded["store"]["status"] == "degraded"
    assert "No space left on device" in degraded["store"]["error"]
    assert before <= kept_while_full
    everything = before | {r.json()["id"] for r in during} | after
    assert everything <= on_disk(small_disk)
    assert "Traceback" not in gateway.logs()


@pytest.mark.faults
def test_a_damaged_record_hides_no_history_from_the_dashboard_or_the_export(
    standin: StandIn, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written in-process, in files of 50, so a few hundred records make closed files.
    monkeypatch.setattr(usage_store, "SEGMENT_RECORDS", 50)
    records = [_record(n) for n in range(400)]
    first = TinyDBStore(data_dir)
    for r in records:
        first.append(r)
    asyncio.run(first.flush())
    first.close()
    path = sorted((data_dir / "usage").glob("*.json"), key=lambda p: files.segment_key(p.name))[5]
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # 100 bytes in the middle, the size kept
        handle.seek(size // 2)
        handle.write(b"\0" * 100)

    with start_gateway(data_dir, "--ollama", standin.url) as gateway, gateway.client() as client:
        paged = dashboard_ids(gateway, "p", limit=30)
        exported = {
            r["id"] for r in client.get("/api/v1/admin/export", params={"project": "p"}).json()
        }
        calls = client.get("/api/v1/admin/stats", params={"project": "p"}).json()["totals"]["calls"]
        health = client.get("/health").json()

    assert len(paged) in (399, 398)  # the one or two records the 100 bytes fell on
    assert exported == paged
    assert paged < {r.id for r in records}
    assert calls == len(paged)
    assert health["status"] == "degraded"
    assert health["store"]["damaged"] == [path.name]
    assert path.name in health["store"]["error"]
    assert gateway.logs().count("USAGE FILE DAMAGED") == 1
    assert "Traceback" not in gateway.logs()


def _record(n: int) -> UsageRecord:
    return UsageRecord(
        id=new_id(),
        date=iso(datetime.now(UTC)),
        total_seconds=0.1,
        total_tokens=2,
        input_tokens=1,
        output_tokens=1,
        model_name="llama3",
        input=[InputMessage("user", f"question {n} " + "x" * 200)],
        output="w0 ",
        project="p",
        status="ok",
    )


def _store_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollama_host", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _ids_in_files(data: Path) -> list[str]:
    """Every id in the TinyDB files, as many times as it is there."""
    ids: list[str] = []
    for path in (data / "usage").glob("*.json"):
        with TinyDB(path, access_mode="r") as db:
            ids += [str(doc["id"]) for doc in db.table("usage").all()]
    return ids


@pytest.mark.faults
@pytest.mark.parametrize("to", ["a file", "standard error"])
def test_records_a_full_disk_refuses_at_sigterm_are_spilled_then_imported_once(
    standin: StandIn, small_disk: Path, tmp_path: Path, to: str
) -> None:
    # The spill goes to the state folder; for "standard error", that and the temp folder
    # are on the full disk too.
    elsewhere = small_disk if to == "standard error" else tmp_path
    env = {"XDG_STATE_HOME": str(elsewhere / "state"), "TMPDIR": str(elsewhere / "tmp")}
    project = unique("spill")
    body = ask(content="x [[tokens=3]]", project=project)
    headers = {"Accept": "application/json"}
    gateway = start_gateway(small_disk, "--ollama", standin.url, env=env)
    with gateway, gateway.client() as client:
        filler = disks.fill(small_disk)
        _until(gateway, client, "degraded")
        asked = {
            client.post("/api/v1/ai/ask_sync", json=body, headers=headers).json()["id"]
            for _ in range(20)
        }
        gateway.signal(signal.SIGTERM)
        code = gateway.wait()
    logs = gateway.logs()

    assert code == 0, logs
    assert "USAGE RECORDS SPILLED: the disk refused" in logs
    assert "USAGE RECORDS LOST" not in logs
    assert "Traceback" not in logs
    if to == "a file":
        [spilled] = (tmp_path / "state" / "ollama-host" / "spill").glob("usage-*.jsonl")
        assert f"they are in {spilled}." in logs
        assert f"-m ollama_host import-spill {spilled} --data {small_disk}" in logs
    else:
        assert not list(small_disk.rglob("usage-*.jsonl"))
        spilled = tmp_path / "journal.txt"  # the log, as journalctl would give it back
        spilled.write_text(logs)
    lines = spill.read_spill([spilled])
    assert lines.unreadable == 0
    assert asked <= {r.id for r in lines.records}

    filler.unlink()
    first = _store_command("import-spill", str(spilled), "--data", str(small_disk))
    again = _store_command("import-spill", str(spilled), "--data", str(small_disk))

    count = len(lines.records)
    assert first.returncode == 0, first.stderr
    assert f"imported {count} usage records" in first.stdout
    assert again.returncode == 0, again.stderr
    assert f"imported 0 usage records into {small_disk} ({count} were there already" in again.stdout
    in_files = _ids_in_files(small_disk)
    assert asked <= set(in_files)
    assert len(in_files) == len(set(in_files))  # each once
