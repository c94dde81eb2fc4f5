"""The PostgreSQL store's own promises: its schema, its bad addresses, its outages, the import.

What every store does is in test_store_contract.py. Outages are made with a TCP proxy between
the store and the machine's server (tests/tcp_proxy.py), cut and restored: the server itself
is never stopped.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from store import StoreError, TinyDBStore, UsageStore, open_store, writer
from store.postgres import database as pg
from store.postgres import store as pg_store
from tests import pg as testpg
from tests.gateway_proc import ROOT, free_port
from tests.store_helpers import fill, newest_first, query, record, stats
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

PASSWORD = "s3cret-pw-never-shown"


def through(dsn: str, proxy: TcpProxy, *, password: str | None = None) -> str:
    """The same database, reached through the proxy (with a password the server ignores)."""
    name = dsn.rsplit("/", 1)[1]
    address = testpg.dsn_of(name, port=proxy.port)
    if password:
        address = address.replace("postgres@", f"postgres:{password}@", 1)
    return address


def eventually(done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
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


# -- the schema -------------------------------------------------------------------------------


def test_gateways_starting_together_migrate_once(dsn: str) -> None:
    params = pg.parse(dsn)
    start = threading.Barrier(4)
    errors: list[BaseException] = []
    found: list[int] = []

    def starting() -> None:
        start.wait()
        try:
            found.append(pg.migrate(params))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=starting) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    # One found an empty database; the others, its work.
    assert sorted(found) == [0, pg.LATEST, pg.LATEST, pg.LATEST]
    applied = testpg.column(dsn, "SELECT version FROM ollama_host.migrations ORDER BY 1")
    assert applied == list(range(1, pg.LATEST + 1))


def test_a_schema_newer_than_the_code_is_refused(dsn: str) -> None:
    pg.migrate(pg.parse(dsn))
    testpg.scalar(
        dsn,
        "INSERT INTO ollama_host.migrations (version) VALUES (%s) RETURNING version",
        pg.LATEST + 1,
    )

    with pytest.raises(pg.SchemaError, match=f"version {pg.LATEST + 1}, newer than this gateway"):
        open_store(dsn)


def test_a_schema_someone_else_made_is_refused_and_left_alone(dsn: str) -> None:
    testpg.execute(
        dsn,
        "CREATE SCHEMA ollama_host; CREATE TABLE ollama_host.usage (theirs int); "
        "INSERT INTO ollama_host.usage VALUES (42); "
        "CREATE TABLE public.accounts (name text); INSERT INTO public.accounts VALUES ('x')",
    )

    with pytest.raises(pg.SchemaError, match="did not make") as refused:
        open_store(dsn)

    assert "usage" in str(refused.value)  # it says what it found
    assert testpg.column(dsn, "SELECT theirs FROM ollama_host.usage") == [42]
    columns = testpg.column(
        dsn,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'ollama_host'",
    )
    assert columns == ["theirs"]
    assert testpg.column(dsn, "SELECT name FROM public.accounts") == ["x"]


def test_other_schemas_of_the_database_are_never_touched(dsn: str) -> None:
    testpg.execute(dsn, "CREATE TABLE public.usage (theirs text)")

    store = open_store(dsn)
    fill(store, [record(1)])
    close(store)

    assert testpg.column(dsn, "SELECT count(*) FROM public.usage") == [0]
    assert count(dsn) == 1


# -- bad addresses ----------------------------------------------------------------------------


def test_an_unreachable_address_names_the_host_never_the_password() -> None:
    port = free_port()  # nothing listens there
    address = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/anything"

    with pytest.raises(pg.DatabaseUnavailable) as refused:
        open_store(address)

    message = str(refused.value)
    assert f"127.0.0.1:{port}" in message
    assert "refused" in message.lower()
    assert PASSWORD not in message


def test_a_wrong_password_names_the_host_never_the_password() -> None:
    server = testpg.FakeServer()
    try:
        with pytest.raises(pg.DatabaseUnavailable) as refused:
            open_store(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{server.port}/db")
    finally:
        server.close()

    message = str(refused.value)
    assert server.passwords == [PASSWORD.encode()]  # it was sent, and refused
    assert 'password authentication failed for user "postgres"' in message
    assert f"127.0.0.1:{server.port}" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "address",
    [
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/db",
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/db?sslmode=sometimes",
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/db?nonsense=1",
    ],
)
def test_an_unusable_address_is_refused_without_the_password(address: str) -> None:
    with pytest.raises(StoreError) as refused:
        open_store(address)

    assert PASSWORD not in str(refused.value)


@pytest.mark.server
@pytest.mark.parametrize("why", ["nothing listens", "a wrong password"])
def test_a_gateway_that_cannot_use_its_database_exits_with_one_line(
    tmp_path: Path, why: str
) -> None:
    server = testpg.FakeServer() if why == "a wrong password" else None
    port = server.port if server else free_port()
    address = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/anything"
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "app.py"), "--data", str(tmp_path), "--store", address],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        if server:
            server.close()

    assert done.returncode == 1
    assert f"cannot connect to PostgreSQL at postgres@127.0.0.1:{port}/anything" in done.stderr
    if server:
        assert "password authentication failed" in done.stderr
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


# -- writing ----------------------------------------------------------------------------------


def test_a_record_sent_again_is_stored_once(dsn: str) -> None:
    store = open_store(dsn)
    try:
        fill(store, [record(1), record(2)])
        # As after a commit whose answer was lost: the batch comes again, with new ones.
        fill(store, [record(2), record(1), record(3)])
        found = query(store, limit=1000)
        counted = stats(store, 3600)
        health = store.health()
    finally:
        close(store)

    assert found == newest_first([record(1), record(2), record(3)])
    assert count(dsn) == 3
    assert counted.totals.calls == 3  # and summed once
    assert sum(row.calls for row in counted.by_model) == 3
    assert health.status == "ok"


def test_records_wait_while_the_database_is_away_and_are_stored_once(
    dsn: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(through(dsn, proxy, password=PASSWORD))
    try:
        fill(store, [record(n) for n in range(50)])
        proxy.cut()
        with caplog.at_level(logging.WARNING):
            for n in range(50, 150):
                store.append(record(n))
            eventually(lambda: store.health().status == "degraded", "health says degraded")
            away = store.health()
            proxy.restore()
            eventually(lambda: store.health().pending == 0, "the held records are written")
            eventually(lambda: store.health().status == "ok", "health says ok again")
        found = query(store, limit=1000)
    finally:
        close(store)

    assert away.pending > 0
    assert away.error is not None
    assert f"127.0.0.1:{proxy.port}" in away.error
    assert PASSWORD not in away.error + away.path + caplog.text
    assert found == newest_first([record(n) for n in range(150)])
    assert count(dsn) == 150  # each exactly once
    assert "usage records wait in memory" in caplog.text


def test_records_held_while_the_database_is_away_are_bounded(
    dsn: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "MAX_PENDING", 5)
    store = open_store(through(dsn, proxy))
    try:
        proxy.cut()
        fill(store, [record(n) for n in range(8)])
        health = store.health()
    finally:
        proxy.restore()
        close(store)

    assert (health.status, health.pending) == ("degraded", 5)
    assert health.error is not None
    assert "3 usage records dropped" in health.error
    assert count(dsn) == 5  # the five held were written at the stop


def test_a_read_while_the_database_is_away_fails_clearly(dsn: str, proxy: TcpProxy) -> None:
    store = open_store(through(dsn, proxy, password=PASSWORD))
    try:
        fill(store, [record(1)])
        proxy.cut()
        eventually(lambda: store.health().status == "degraded", "the store notices")
        with pytest.raises(pg_store.StoreUnavailable) as failed:
            query(store)
        proxy.restore()
        eventually(lambda: _answers(store), "reads work again")
    finally:
        close(store)

    assert f"127.0.0.1:{proxy.port}" in str(failed.value)
    assert PASSWORD not in str(failed.value)


def _answers(store: UsageStore) -> bool:
    try:
        return query(store) == [record(1)]
    except pg_store.StoreUnavailable:
        return False


def test_another_gateways_records_move_this_ones_changes(dsn: str) -> None:
    mine, theirs = open_store(dsn), open_store(dsn)
    try:
        before = mine.changes
        fill(theirs, [record(1)])
        eventually(lambda: mine.changes != before, "the change counter moves")
        found = query(mine)
    finally:
        close(mine)
        close(theirs)

    assert found == [record(1)]


# -- import ------------------------------------------------------------------------------------


def test_import_copies_a_data_folder_once(dsn: str, data_dir: Path) -> None:
    from access.keys import Access, KeyLimits

    records = [record(n) for n in range(300)]
    folder = TinyDBStore(data_dir)
    fill(folder, records)
    folder.close()
    access, _ = Access.open(data_dir, "token")
    _, plain = asyncio.run(access.keys.create("moved", None, KeyLimits()))
    argv = [sys.executable, "-m", "ollama_host", "import-usage", "--from", str(data_dir)]
    argv += ["--store", dsn]

    first = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert first.returncode == 0, first.stderr
    assert "read 300 usage records" in first.stderr
    assert "300 added, 0 there already" in first.stderr
    assert "1 of 1 API keys added" in first.stderr
    assert again.returncode == 0, again.stderr
    assert "0 added, 300 there already" in again.stderr
    assert count(dsn) == 300
    store = open_store(dsn)
    try:
        assert query(store, limit=1000) == newest_first(records)
    finally:
        close(store)
    moved, _ = testpg.access_of(dsn, "token")
    try:
        key = moved.keys.verify(plain)
        assert key is not None
        assert key.label == "moved"
        assert moved.secret == access.secret  # fingerprints keep matching
    finally:
        moved.close()


@pytest.mark.anyio
async def test_odd_query_strings_change_nothing_and_leak_nothing(dsn: str, tmp_path: Path) -> None:
    from tests.asgi import in_process

    async with in_process(tmp_path / "data", "--store", dsn) as local, local.client() as client:
        asked = await client.post(
            "/api/v1/ai/ask_sync",
            json={"agent": "llama3", "content": "hi", "project": "p'; --"},
            headers={"Accept": "application/json"},
        )
        assert asked.status_code == 200
        await local.app.state.gateway.store.flush()
        odd = [
            {"project": "' OR '1'='1"},
            {"project": "p'; --"},
            {"model": "llama3'); DELETE FROM ollama_host.usage; --"},
            {"status": "ok' OR 1=1 --"},
            {"since": "2026-01-01'; DROP TABLE x; --"},
            {"since": "0001-01-01", "until": "9999-12-31"},
            {"cursor": "ffffffffffffffffffff' OR 'a'='a"},
            {"offset": "99999999999999999999999"},
            {"limit": "-1"},
            {"project": "\u0000"},
        ]
        answers = []
        for params in odd:
            for path in ("dashboard", "stats", "export"):
                answers.append(await client.get(f"/api/v1/admin/{path}", params=params))
    for answer in answers:
        assert answer.status_code in (200, 422), answer.text
        assert "Traceback" not in answer.text
        assert "psycopg" not in answer.text
        assert "SELECT" not in answer.text
    found = [a.json() for a in answers[3:6]]  # project = "p'; --": its own record
    assert [r["project"] for r in found[0]] == ["p'; --"]
    assert found[1]["totals"]["calls"] == 1
    assert count(dsn) == 1  # nothing deleted, nothing added


@pytest.mark.anyio
@pytest.mark.parametrize(
    "params",
    [
        {"since": "9999-12-31T23:59:59.999999"},
        {"since": "9999-12-31T23:00:00"},
        {"until": "0001-01-01T00:00:00"},
        {"since": "0001-01-01T00:00:00.000001", "until": "9999-12-31T23:59:59.999999"},
    ],
)
async def test_stats_at_the_ends_of_time_answer_clearly(
    dsn: str, tmp_path: Path, params: dict[str, str]
) -> None:
    from tests.asgi import in_process

    async with in_process(tmp_path / "data", "--store", dsn) as local, local.client() as client:
        answers = [
            await client.get(f"/api/v1/admin/{path}", params=params)
            for path in ("stats", "dashboard", "export")
        ]

    for answer in answers:
        assert answer.status_code in (200, 422), answer.text
        assert "Traceback" not in answer.text


@pytest.mark.server
@pytest.mark.parametrize(
    "damage",
    [
        "DROP TABLE ollama_host.state",
        "DROP TABLE ollama_host.usage_hourly",
        "DROP TABLE ollama_host.keys",
        "ALTER TABLE ollama_host.usage DROP COLUMN upstream",
        "ALTER TABLE ollama_host.usage DROP COLUMN gpu_seconds",
        "ALTER TABLE ollama_host.usage_hourly DROP COLUMN key_label",
        "DELETE FROM ollama_host.state",
    ],
)
def test_a_half_made_schema_stops_the_start_with_one_line(
    dsn: str, tmp_path: Path, damage: str
) -> None:
    pg.migrate(pg.parse(dsn))
    testpg.execute(dsn, damage)

    done = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--data", str(tmp_path), "--store", dsn],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "schema" in done.stderr
    assert "ollama_host" in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
