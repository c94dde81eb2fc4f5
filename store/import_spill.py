"""`python -m ollama_host import-spill FILE... --data DIR`: bring records spilled at shutdown back.

The gateway spills records when its disk refuses them as it stops (see store/spill.py) and
logs this command. Run it with the gateway stopped, once there is space again. Importing
twice adds nothing: records carry ids.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .base import FolderInUse, StoreError
from .spill import SPILL_PREFIX, SpillError, import_spill


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
