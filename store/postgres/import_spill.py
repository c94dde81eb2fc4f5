"""`python -m ollama_host import-spill FILE... --store postgresql://...`: spilled records back
into PostgreSQL.

The gateway spills records it could not write to PostgreSQL (the database away at a stop, a
kill -9 while records waited, a record the database refused; see store/postgres/pending.py)
and logs this command. Gateways may keep running meanwhile: the database takes writers side
by side. Importing twice adds nothing: records carry ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..spill import Imported, SpillError, read_spill
from .store import PostgresStore


def import_spill(paths: Iterable[Path], dsn: str) -> Imported:
    """Add the spilled records to the database at `dsn`, each id once. Raises OSError,
    StoreError, or SpillError if the database does not take them all."""
    found = read_spill(paths)
    store = PostgresStore(dsn, spill=False)
    try:
        present = store.known(list({r.id for r in found.records}))
        fresh = {r.id: r for r in found.records if r.id not in present}
        for record in fresh.values():
            store.append(record)
        store.flush_now()
        refused, why = store.refused()
        health = store.health()
        if refused:
            raise SpillError(
                f"PostgreSQL refused {refused} of the {len(fresh)} records ({why}); the others "
                "were imported. Fix the cause and import the same files again: what is "
                "there already is passed over"
            )
        if health.pending:
            raise SpillError(
                f"PostgreSQL did not take the records ({health.error}); import the same "
                "files again once it does: what is there already is passed over"
            )
    finally:
        store.close()
    return Imported(len(fresh), len(found.records) - len(fresh), found.unreadable)
