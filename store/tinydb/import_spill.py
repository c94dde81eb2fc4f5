"""`python -m ollama_host import-spill FILE... --data DIR`: bring records spilled at shutdown back.

The gateway spills records when its disk refuses them as it stops (see store/tinydb/spill.py) and
logs this command. Run it with the gateway stopped, once there is space again. Importing
twice adds nothing: records carry ids.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from ..base import FolderInUse, StoreError
from .spill import SPILL_PREFIX, read_spill
from .store import TinyDBStore


class Imported(NamedTuple):
    added: int
    present: int  # already in the store (imported before, or written after all)
    unreadable: int


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


class SpillError(Exception):
    """The import could not write the records."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_host import-spill",
        description="Import usage records the gateway spilled at shutdown: spill files "
        f"(one JSON record per line), or saved log output with lines starting {SPILL_PREFIX!r}.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--data", required=True, type=Path, help="the gateway's data folder")
    args = parser.parse_args(argv)

    try:
        done = import_spill(args.files, args.data.expanduser())
    except FolderInUse:
        print(
            f"a gateway is running on {args.data}: stop it, import, then start it again",
            file=sys.stderr,
        )
        return 1
    except (OSError, StoreError, SpillError) as exc:
        print(f"cannot import: {exc}", file=sys.stderr)
        return 1
    print(
        f"imported {done.added} usage records into {args.data} "
        f"({done.present} were there already, {done.unreadable} lines unreadable)"
    )
    if done.unreadable:
        print(f"{done.unreadable} lines could not be read as records", file=sys.stderr)
        return 1
    return 0
