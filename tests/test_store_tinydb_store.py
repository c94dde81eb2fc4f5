"""The TinyDB store's own promises: its files, recovery, faults.

What every store must do (queries, stats, retention, export) is in test_store_contract.py."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from tinydb import TinyDB

from ollama_host.settings import parse_settings
from store import FolderInUse, StoreError, TinyDBStore, UsageRecord, spill, writer
from store.tinydb import files, import_spill
from store.tinydb import store as usage_store
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
    records = [record(n) for n in range(20)]
    first = TinyDBStore(data_dir)
    fill(first, records)
    first.close()
    [path] = (data_dir / "usage").glob("*.json")
    whole = path.read_bytes()
    whole_before_cut = [
        r.id for r, at, length in _documents(path) if at + length <= len(whole) // 2
    ]
    broken = {"garbage": b"\x00\xffnot json", "truncated": whole[: len(whole) // 2], "empty": b""}
    path.write_bytes(broken[damage])

    with caplog.at_level(logging.ERROR):
        store = TinyDBStore(data_dir)
    try:
        fill(store, [record(100)])
        found = query(store)
        health = store.health()
    finally:
        store.close()

    [aside] = (data_dir / "usage").glob(f"{path.name}.corrupt-*")
    assert aside.read_bytes() == broken[damage]  # kept as it was, never emptied
    assert str(aside) in caplog.text
    assert (health.status, health.damaged) == ("degraded", [path.name])
    if damage == "truncated":  # the records before the cut still read, and are kept
        assert "USAGE FILE DAMAGED" in caplog.text
        assert [r.id for r in found] == [record(100).id, *reversed(whole_before_cut)]
        assert 0 < len(whole_before_cut) < len(records)
    else:
        assert "USAGE FILE UNREADABLE" in caplog.text
        assert [r.id for r in found] == [record(100).id]


@pytest.mark.usefixtures("small_files")
def test_truncated_closed_file_keeps_what_reads_and_its_original(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [record(n) for n in range(120)]
    first = TinyDBStore(data_dir)
    fill(first, records)
    first.close()
    oldest = sorted((data_dir / "usage").glob("*.json"))[0]
    cut = oldest.read_bytes()[:-100]
    oldest.write_bytes(cut)

    with caplog.at_level(logging.ERROR):
        found = read_all(data_dir)

    # The cut took the last record of the file; the other 49 are kept in it.
    assert found == sorted(records[:49] + records[50:], key=lambda r: r.id, reverse=True)
    [aside] = (data_dir / "usage").glob(f"{oldest.name}.corrupt-*")
    assert aside.read_bytes() == cut
    assert "USAGE FILE DAMAGED" in caplog.text
    assert "1 records could not be read" in caplog.text


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
    journal = data_dir / "usage" / files.JOURNAL
    # The fold writes the TinyDB file first and empties the journal after: wait for both.
    wait_until(lambda: len(tinydb_docs(data_dir / "usage")) == 401 and not journal.read_bytes())

    assert len(tinydb_docs(data_dir / "usage")) == 401
    assert journal.read_bytes() == b""


def test_records_held_while_the_disk_refuses_are_bounded(
    store: TinyDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "MAX_PENDING", 5)
    monkeypatch.setattr(os, "fsync", full)

    fill(store, [record(n) for n in range(8)])

    health = store.health()
    assert (health.status, health.pending) == ("degraded", 5)
    assert health.error is not None
    assert "3 usage records dropped" in health.error


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


def _overwrite(path: Path, at: int, length: int = 100) -> bytes:
    """Zero `length` bytes at `at`, keeping the file's size (a bad sector, bit rot); the result."""
    with open(path, "r+b") as handle:
        handle.seek(at)
        handle.write(b"\0" * length)
    return path.read_bytes()


def _documents(path: Path) -> list[tuple[UsageRecord, int, int]]:
    """A closed file's records in file order, each with where its document lies in it."""
    with TinyDB(path, access_mode="r") as db:
        records = [msgspec.convert(doc, UsageRecord) for doc in db.table("usage").all()]
    content, spans = files.layout([files.encode(r) for r in records])
    assert content == path.read_bytes()
    return [(r, at, length) for r, (at, length) in zip(records, spans, strict=True)]


def _page_through(store: TinyDBStore, limit: int) -> list[UsageRecord]:
    """Every record, a page at a time with the `before` cursor, as the dashboard pages."""
    found: list[UsageRecord] = []
    while True:
        page = query(store, limit=limit, **({"before": found[-1].id} if found else {}))
        found += page
        if len(page) < limit:
            return found


@pytest.mark.usefixtures("small_files")
@pytest.mark.parametrize("where", ["inside a record", "across two", "the last", "the first"])
def test_a_damaged_record_is_skipped_and_the_rest_of_its_file_stays_readable(
    data_dir: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    records = [record(n) for n in range(300)]
    first = TinyDBStore(data_dir)
    fill(first, records)
    first.close()
    path = sorted((data_dir / "usage").glob("*.json"), key=lambda p: files.segment_key(p.name))[2]
    docs = _documents(path)
    _, middle, length = docs[20]
    at, lost = {
        "inside a record": (middle + length // 2 - 50, [20]),
        "across two": (middle - 50, [19, 20]),  # the end of one and the start of the next
        "the last": (path.stat().st_size - 100, [49]),
        "the first": (0, [0]),
    }[where]
    damaged = _overwrite(path, at)
    gone = {docs[i][0].id for i in lost}
    expected = sorted((r for r in records if r.id not in gone), key=lambda r: r.id, reverse=True)

    store = TinyDBStore(data_dir)
    try:
        with caplog.at_level(logging.ERROR):
            paged = _page_through(store, limit=7)
            again = _page_through(store, limit=50)
            totals = stats(store, 86400).totals
        health = store.health()
    finally:
        store.close()

    assert [r.id for r in paged] == [r.id for r in expected]
    assert again == expected
    assert totals.calls == len(expected)
    assert health.status == "degraded"
    assert health.damaged == [path.name]
    assert health.error is not None
    assert f"{path.name} is damaged: {len(lost)} record" in health.error
    assert caplog.text.count("USAGE FILE DAMAGED") == 1  # once for the file, not per query
    [aside] = path.parent.glob(f"{path.name}.corrupt-*")
    assert aside.read_bytes() == damaged
    assert str(aside) in caplog.text
    # Repaired in place: plain TinyDB reads it again, and a restart finds nothing to repeat.
    assert [d["id"] for d in tinydb_docs(path.parent)] == [
        r.id for r in sorted(records, key=lambda r: r.id) if r.id not in gone
    ]
    caplog.clear()
    assert read_all(data_dir) == expected[:1000]
    assert "USAGE FILE" not in caplog.text


@pytest.mark.usefixtures("small_files")
def test_stats_before_any_page_count_what_the_summary_holds(data_dir: Path) -> None:
    """Stats read summaries and rows, never documents: damage they cannot see they do not
    count as missing. The first page that meets it corrects them."""
    records = [record(n) for n in range(120)]
    first = TinyDBStore(data_dir)
    fill(first, records)
    first.close()
    path = sorted((data_dir / "usage").glob("*.json"), key=lambda p: files.segment_key(p.name))[0]
    _, at, length = _documents(path)[10]
    _overwrite(path, at + length // 2 - 50)

    store = TinyDBStore(data_dir)
    try:
        before = stats(store, 86400).totals.calls
        paged = _page_through(store, limit=1000)
        after = stats(store, 86400).totals.calls
    finally:
        store.close()

    assert before == 120
    assert len(paged) == after == 119


@pytest.mark.parametrize("refusing", [0, 1, 2])
def test_records_the_disk_refuses_at_close_are_spilled_where_they_fit(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    refusing: int,
) -> None:
    """The state folder first, then the temp folder, then standard error; `refusing` is how
    many of the folders cannot take them (nothing can be made under a plain file)."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    state = (blocked if refusing >= 1 else tmp_path) / "state"
    temp = (blocked if refusing >= 2 else tmp_path) / "tmp"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv("TMPDIR", str(temp))
    records = [record(n) for n in range(5)]
    store = TinyDBStore(data_dir)

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(usage_store, "_write_all", full)
    for r in records:
        store.append(r)
    with caplog.at_level(logging.ERROR):
        store.close()
    monkeypatch.undo()

    stderr = capfd.readouterr().err
    assert "USAGE RECORDS SPILLED: the disk refused 5 records" in caplog.text
    assert "USAGE RECORDS LOST" not in caplog.text
    assert "No space left on device" in caplog.text
    if refusing < 2:
        folder = [state / "ollama-host" / "spill", temp / "ollama-host-spill"][refusing]
        [spilled] = folder.glob("usage-*.jsonl")
        assert spilled.stat().st_mode & 0o777 == 0o600
        assert [files.decode_line(line) for line in spilled.read_bytes().splitlines()] == records
        assert f"-m ollama_host import-spill {spilled} --data {data_dir}" in caplog.text
        assert spill.SPILL_PREFIX not in stderr
    else:
        lines = [line for line in stderr.splitlines() if line.startswith(spill.SPILL_PREFIX)]
        assert len(lines) == 5
        assert "standard error" in caplog.text
        assert "import-spill FILE" in caplog.text
        spilled = tmp_path / "saved-log.txt"  # what an operator saves from the journal
        spilled.write_text("Nov 30 gateway[1]: some other line\n" + stderr)

    first = import_spill.import_spill([spilled], data_dir)
    again = import_spill.import_spill([spilled], data_dir)

    assert first == spill.Imported(added=5, present=0, unreadable=0)
    assert again == spill.Imported(added=0, present=5, unreadable=0)
    assert read_all(data_dir) == sorted(records, key=lambda r: r.id, reverse=True)


def test_an_import_refuses_while_a_gateway_holds_the_folder(
    store: TinyDBStore, data_dir: Path, tmp_path: Path
) -> None:
    spilled = tmp_path / "spill.jsonl"
    spilled.write_bytes(files.encode(record(1)) + b"\n")

    with pytest.raises(FolderInUse):
        import_spill.import_spill([spilled], data_dir)


FRONTS = [("seed", "/api/v1/ai/ask_sync"), ("ollama", "/api/chat"), ("openai", "/v1/embeddings")]


def _fronted(n: int) -> UsageRecord:
    front, endpoint = FRONTS[n % 3]
    return record(n, front=front, endpoint=endpoint, upstream=f"gpu-{n % 2}")


@pytest.mark.usefixtures("small_files")
def test_front_endpoint_and_upstream_filter_and_break_down(store: TinyDBStore) -> None:
    records = [_fronted(n) for n in range(700)]  # most in closed files, summed from summaries
    fill(store, records)

    found = query(store, front="ollama", upstream="gpu-1", limit=1000)
    summed = stats(store, 3600)
    only_openai = stats(store, 3600, endpoint="/v1/embeddings")

    expected = [r for r in records if r.front == "ollama" and r.upstream == "gpu-1"]
    assert found == sorted(expected, key=lambda r: r.id, reverse=True)
    assert {row.key: row.calls for row in summed.by_front} == {
        "seed": 234,
        "ollama": 233,
        "openai": 233,
    }
    assert {row.key: row.calls for row in summed.by_endpoint} == {
        "/api/v1/ai/ask_sync": 234,
        "/api/chat": 233,
        "/v1/embeddings": 233,
    }
    assert {row.key: row.calls for row in summed.by_upstream} == {"gpu-0": 350, "gpu-1": 350}
    check_stats(only_openai, [r for r in records if r.front == "openai"], 3600)
    assert [row.key for row in only_openai.by_front] == ["openai"]


@pytest.mark.usefixtures("small_files")
def test_an_index_of_an_older_version_is_rebuilt_at_startup(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [_fronted(n) for n in range(120)]
    # Files indexed as before the front, endpoint and upstream were indexed: rows without them.
    real_row = files._row
    monkeypatch.setattr(
        files,
        "_row",
        lambda r, span: msgspec.structs.replace(
            real_row(r, span), front=None, endpoint=None, upstream=None
        ),
    )
    monkeypatch.setattr(files, "INDEX_VERSION", 1)
    first = TinyDBStore(data_dir)
    fill(first, records)
    first.close()
    monkeypatch.undo()

    store = TinyDBStore(data_dir)
    try:
        found = query(store, front="openai", limit=1000)
        summed = stats(store, 3600)
    finally:
        store.close()

    assert found == sorted((r for r in records if r.front == "openai"), key=lambda r: r.id)[::-1]
    assert {row.key: row.calls for row in summed.by_front} == {
        "seed": 40,
        "ollama": 40,
        "openai": 40,
    }


def test_the_logged_import_command_runs_from_the_gateways_folder() -> None:
    command = spill.import_command("/spill/usage-1.jsonl", ["--data", "/var/lib/gateway"])

    words = shlex.split(command)
    assert words[0] == "cd"
    assert (Path(words[1]) / "app.py").is_file()  # where `python -m ollama_host` runs
    assert words[-4:] == ["import-spill", "/spill/usage-1.jsonl", "--data", "/var/lib/gateway"]
