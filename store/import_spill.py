"""`python -m ollama_host import-spill FILE... (--data DIR | --store ADDRESS)`: bring records a
store spilled back into it.

The TinyDB store spills what its disk refuses at a stop (store/tinydb/import_spill.py takes
them back); the PostgreSQL store what the database did not take (store/postgres/import_spill.py).
Either logs this command with its files. Records carry ids: importing twice adds nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import kind_of
from .base import FolderInUse, StoreError
from .spill import SPILL_PREFIX, Imported, SpillError
from .tinydb import TinyDBStore
from .tinydb.import_spill import import_spill as into_folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_host import-spill",
        description="Import usage records the gateway spilled: spill files (one JSON record "
        f"per line), or saved log output with lines starting {SPILL_PREFIX!r}.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--data", type=Path, help="the gateway's data folder (TinyDB files)")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="the gateway's database, postgresql://USER:PASSWORD@HOST:PORT/DB (default: "
        "$OLLAMA_GATEWAY_STORE; a password left out is read from PGPASSWORD or ~/.pgpass)",
    )
    args = parser.parse_args(argv)
    store = args.store or (None if args.data else os.environ.get("OLLAMA_GATEWAY_STORE"))
    if (store is None) == (args.data is None):
        parser.error("give either --data DIR or --store URL")

    target = str(args.data) if store is None else "the database"
    try:
        if store is None:
            done = into_folder(args.files, args.data.expanduser())
        else:
            done = _into_database(args.files, store)
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
        f"imported {done.added} usage records into {target} "
        f"({done.present} were there already, {done.unreadable} lines unreadable)"
    )
    if done.unreadable:
        print(f"{done.unreadable} lines could not be read as records", file=sys.stderr)
        return 1
    return 0


def _into_database(files: list[Path], address: str) -> Imported:
    if kind_of(address) is TinyDBStore:
        raise StoreError("--store must be a database address (for a folder, use --data)")
    # Only here: a workstation install has no database driver (kind_of said so if missing).
    from .postgres.import_spill import import_spill as into_database

    return into_database(files, address)
