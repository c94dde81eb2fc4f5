"""`python -m ollama_host import-spill FILE... --data DIR`: spilled records back into TinyDB.

The gateway spills records when its disk refuses them as it stops (see store/spill.py) and
logs this command. Run it with the gateway stopped, once there is space again. Importing
twice adds nothing: records carry ids. The command line is store/import_spill.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..spill import Imported, SpillError, read_spill
from .store import TinyDBStore


def import_spill(paths: Iterable[Path], data: Path) -> Imported:
    """Add the spilled records to the store in `data` (the gateway must be stopped),
    each id once. Raises OSError, StoreError, or SpillError if the disk still refuses."""
    found = read_spill(paths)
    store = TinyDBStore(data, spill=False)
    try:
        known = store.known({r.id for r in found.records})
        added = 0
        for record in found.records:
            if record.id not in known:
                known.add(record.id)
                store.append(record)
                added += 1
        store.sync()
        health = store.health()
        if health.pending:
            raise SpillError(
                f"the disk refused the records ({health.error}); nothing was imported. "
                "Free some space and run the import again."
            )
    finally:
        store.close()
    return Imported(added, len(found.records) - added, found.unreadable)
