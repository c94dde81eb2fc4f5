"""The TinyDB store's own promises: its files, recovery, faults.

What every store must do (queries, stats, retention, export) is in test_store_contract.py."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from tinydb import TinyDB

from ollama_host.settings import parse_settings
from store import StoreError, TinyDBStore, UsageRecord, files
from store import tinydb as usage_store
from tests.store_helpers import check_stats, fill, query, record, stats


def read_all(data_dir: Path) -> list[UsageRecord]:
    """Open the store on data_dir (as at startup), read every record newest first, close it."""
    store = TinyDBStore(data_dir)
    try:
        return query(store, limit=1000)
    finally:
        store.close()


def tinydb_docs(usage: Path) -> list[dict[str, object]]:
    """Every record as plain TinyDB reads it, file by file in name order."""
    docs: list[dict[str, object]] = []
    for path in sorted(usage.glob("*.json"), key=lambda p: files.segment_key(p.name)):
        with TinyDB(path, access_mode="r") as db:
            docs.extend(db.table("usage").all())
    return docs


def wait_until(done: Callable[[], bool]) -> None:
    """Poll until done() (the writer works on its own thread); fail after 5 s."""
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


@pytest.fixture
def small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of 50 records, so a few hundred records span many files."""
    monkeypatch.setattr(usage_store, "SEGMENT_RECORDS", 50)


@pytest.fixture
def store(data_dir: Path) -> Iterator[TinyDBStore]:
    opened = TinyDBStore(data_dir)
    yield opened
    opened.close()


def test_records_land_in_files_plain_tinydb_reads(store: TinyDBStore, data_dir: Path) -> None:
    records = [record(n) for n in range(120)]

    fill(store, records)

    docs = tinydb_docs(data_dir / "usage")
    assert docs == [msgspec.to_builtins(r) for r in records]


@pytest.mark.usefixtures("small_files")
def test_files_are_split_and_each_is_a_whole_tinydb_file(
    store: TinyDBStore, data_dir: Path
) -> None:
    fill(store, [record(n) for n in range(230)])

    names = sorted(p.name for p in (data_dir / "usage").glob("*.json"))
    assert len(names) == 5
    for name in names:
        with TinyDB(data_dir / "usage" / name, access_mode="r") as db:
            assert 0 < len(db.table("usage")) <= 50


@pytest.mark.usefixtures("small_files")
def test_query_skips_files_that_cannot_match(
    store: TinyDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(store, [record(n, project="common") for n in range(200)])
    fill(store, [record(n, project="rare") for n in range(200, 210)])
    fill(store, [record(n, project="common") for n in range(210, 400)])
    read: list[str] = []
    real = files.read_rows

    def spy(path: Path) -> list[files.Row]:
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(files, "read_rows", spy)
    store._cache.clear()

    found = query(store, project="rare")

    assert [r.id for r in found] == sorted((record(n).id for n in range(200, 210)), reverse=True)
    assert len(read) == 1  # the one closed file holding "rare"; the rest was skipped


@pytest.mark.usefixtures("small_files")
def test_reopening_reads_summaries_not_history(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [record(n) for n in range(260)]
    with_store = TinyDBStore(data_dir)
    fill(with_store, records)
    with_store.close()
    read: list[str] = []
    real = files.read_segment

    def spy(path: Path) -> list[UsageRecord]:
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(files, "read_segment", spy)

    reopened = TinyDBStore(data_dir)
    try:
        assert len(read) == 1  # only the newest file, the one still being filled
        found = query(reopened, limit=1000)
    finally:
        reopened.close()
    assert found == sorted(records, key=lambda r: r.id, reverse=True)


def _journal(data_dir: Path, records: list[UsageRecord], tail: bytes = b"") -> None:
    lines = b"".join(files.encode(r) + b"\n" for r in records)
    (data_dir / "usage" / files.JOURNAL).write_bytes(lines + tail)


def test_journal_left_by_a_crash_is_folded_in_at_startup(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept = [record(n) for n in range(30)]
    first = TinyDBStore(data_dir)
    fill(first, kept[:10])
    first.close()
    # A crash after the file was written but before the journal was emptied, plus a
    # record the crash cut in half.
    _journal(data_dir, kept[5:], tail=files.encode(record(99))[:40])

    with caplog.at_level(logging.WARNING):
        found = read_all(data_dir)

    assert found == sorted(kept, key=lambda r: r.id, reverse=True)
    assert [d["id"] for d in tinydb_docs(data_dir / "usage")] == [r.id for r in kept]
    assert (data_dir / "usage" / files.JOURNAL).read_bytes() == b""
    assert "cut short by a crash" in caplog.text


def test_garbled_journal_is_set_aside_and_its_good_lines_kept(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    TinyDBStore(data_dir).close()
    good = [record(n) for n in range(3)]
    garbled = files.encode(good[0]) + b"\n" + b"{not json\n" + files.encode(good[1]) + b"\n"
    garbled += files.encode(good[2]) + b"\n"
    (data_dir / "usage" / files.JOURNAL).write_bytes(garbled)

    with caplog.at_level(logging.ERROR):
        store = TinyDBStore(data_dir)
    try:
        found = query(store)
    finally:
        store.close()

    assert found == sorted(good, key=lambda r: r.id, reverse=True)
    [aside] = (data_dir / "usage").glob("journal.jsonl.corrupt-*")
    assert aside.read_bytes() == garbled
    assert "USAGE FILE UNREADABLE" in caplog.text


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_newest_file_is_moved_aside_loudly(
    data_dir: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    first = TinyDBStore(data_dir)
    fill(first, [record(n) for n in range(20)])
    first.close()
    [path] = (data_dir / "usage").glob("*.json")
    whole = path.read_bytes()
    broken = {"garbage": b"\x00\xffnot json", "truncated": whole[: len(whole) // 2], "empty": b""}
    path.write_bytes(broken[damage])

    with caplog.at_level(logging.ERROR):
        store = TinyDBStore(data_dir)
    try:
        fill(store, [record(100)])
        found = query(store)
    finally:
        store.close()

    [aside] = (data_dir / "usage").glob(f"{path.name}.corrupt-*")
    assert aside.read_bytes() == broken[damage]  # kept as it was, never emptied
    assert "USAGE FILE UNREADABLE" in caplog.text
    assert str(aside) in caplog.text
    assert [r.id for r in found] == [record(100).id]


@pytest.mark.usefixtures("small_files")
def test_truncated_closed_file_is_moved_aside_the_rest_kept(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [record(n) for n in range(120)]
    first = TinyDBStore(data_dir)
    fill(first, records)
    first.close()
    oldest = sorted((data_dir / "usage").glob("*.json"))[0]
    oldest.write_bytes(oldest.read_bytes()[:-100])

    with caplog.at_level(logging.ERROR):
        found = read_all(data_dir)

    assert found == sorted(records[50:], key=lambda r: r.id, reverse=True)
    assert list((data_dir / "usage").glob(f"{oldest.name}.corrupt-*"))
    assert "USAGE FILE UNREADABLE" in caplog.text


@pytest.mark.usefixtures("small_files")
def test_unreadable_summary_is_rebuilt(data_dir: Path) -> None:
    records = [record(n) for n in range(120)]
    first = TinyDBStore(data_dir)
    fill(first, records)
    first.close()
    for summary in (data_dir / "usage" / files.INDEX).iterdir():
        summary.write_bytes(b"junk")

    store = TinyDBStore(data_dir)
    try:
        found = stats(store, 3600)
    finally:
        store.close()

    check_stats(found, records, 3600)


def test_a_second_store_on_the_same_folder_is_refused(store: TinyDBStore, data_dir: Path) -> None:
    with pytest.raises(StoreError, match="another gateway is already using the data folder"):
        TinyDBStore(data_dir)


def test_a_write_error_degrades_health_and_writing_resumes(
    store: TinyDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    fill(store, [record(1)])
    broken = store.health()
    monkeypatch.setattr(os, "fsync", real_fsync)
    fill(store, [record(2)])

    assert (broken.status, broken.pending) == ("degraded", 1)
    assert broken.error is not None
    assert "No space left on device" in broken.error
    assert store.health().status == "ok"
    assert [r.id for r in query(store)] == [record(2).id, record(1).id]


def test_retention_setting_is_read_from_flag_and_environment() -> None:
    assert parse_settings([], env={}).retention_days is None
    assert parse_settings(["--retention-days", "30"], env={}).retention_days == 30
    env = {"OLLAMA_GATEWAY_RETENTION_DAYS": "7.5"}
    assert parse_settings([], env=env).retention_days == 7.5


def test_small_batches_wait_in_the_journal_not_in_a_file_rewrite(
    store: TinyDBStore, data_dir: Path
) -> None:
    fill(store, [record(n) for n in range(400)])  # flush() folds: the file holds 400
    [newest] = (data_dir / "usage").glob("*.json")
    written = newest.stat().st_mtime_ns

    for n in range(400, 420):  # 5% of the file: not worth rewriting it yet
        store.append(record(n))
    wait_until(lambda: store.health().pending == 0)

    journal = (data_dir / "usage" / files.JOURNAL).read_bytes().splitlines()
    in_journal = [files.decode_line(line).id for line in journal]
    assert in_journal == [record(n).id for n in range(400, 420)]
    assert newest.stat().st_mtime_ns == written
    assert len(query(store, limit=1000)) == 420


def test_journal_is_folded_once_its_oldest_record_is_old_enough(
    store: TinyDBStore, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(store, [record(n) for n in range(400)])
    monkeypatch.setattr(usage_store, "FOLD_MAX_SECONDS", 0.05)

    store.append(record(400))
    wait_until(lambda: len(tinydb_docs(data_dir / "usage")) == 401)

    assert len(tinydb_docs(data_dir / "usage")) == 401
    assert (data_dir / "usage" / files.JOURNAL).read_bytes() == b""


def test_records_held_while_the_disk_refuses_are_bounded(
    store: TinyDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(usage_store, "MAX_PENDING", 5)
    monkeypatch.setattr(os, "fsync", full)

    fill(store, [record(n) for n in range(8)])

    health = store.health()
    assert (health.status, health.pending) == ("degraded", 5)
    assert health.error is not None
    assert "3 records dropped" in health.error


def test_the_single_file_log_of_earlier_versions_is_imported(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [record(n) for n in range(30)]
    data_dir.mkdir()
    with TinyDB(data_dir / "usage.json") as db:  # TinyDB's own writer, spaces and all
        db.table("usage").insert_multiple(msgspec.to_builtins(records))

    with caplog.at_level(logging.WARNING):
        found = read_all(data_dir)

    assert found == sorted(records, key=lambda r: r.id, reverse=True)
    assert [d["id"] for d in tinydb_docs(data_dir / "usage")] == [r.id for r in records]
    assert not (data_dir / "usage.json").exists()
    assert (data_dir / "usage.json.imported").exists()
    assert "imported 30 usage records" in caplog.text
