"""store/postgres/pending.py: the file of records PostgreSQL has not acknowledged, without a
database (the store's use of it is in test_store_postgres_faults.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from store.postgres import pending
from store.spill import read_spill
from tests.store_helpers import record


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}


def test_a_live_gateways_file_is_left_alone(env: dict[str, str]) -> None:
    live = pending.PendingFile(env=env)
    live.write([record(1), record(2)])

    assert pending.left_behind(env=env) == []
    assert live.path is not None
    assert live.path.exists()
    live.remove()
    assert not live.path.exists()


def test_a_dead_gateways_file_becomes_a_spill_file_and_an_empty_one_goes(
    env: dict[str, str],
) -> None:
    dead, empty = pending.PendingFile(env=env), pending.PendingFile(env=env)
    dead.write([record(1), record(2)])
    dead.write([record(3)])
    assert dead.path is not None
    assert empty.path is not None
    # As a kill -9 leaves them: the descriptors closed by the kernel, the files in place.
    for file in (dead, empty):
        assert file._fd is not None
        os.close(file._fd)

    found = pending.left_behind(env=env)

    assert [(path.name.startswith("usage-"), count) for path, count in found] == [(True, 3)]
    assert [r.id for r in read_spill([found[0][0]]).records] == [record(n).id for n in (1, 2, 3)]
    assert not dead.path.exists()
    assert not empty.path.exists()
    assert pending.left_behind(env=env) == []  # told once


def test_a_file_emptied_once_its_records_are_taken_holds_only_what_waits(
    env: dict[str, str],
) -> None:
    file = pending.PendingFile(env=env)
    file.write([record(1)])
    file.clear()
    file.write([record(2)])

    kept = file.keep()

    assert kept is not None
    assert Path(kept).name.startswith("usage-")
    assert [r.id for r in read_spill([Path(kept)]).records] == [record(2).id]
