"""The command line: `python -m ollama_host [COMMAND] ...`.

python -m ollama_host [app.py flags]    run the gateway (the same as `python app.py`)
python -m ollama_host settings-table    print the README's settings table
python -m ollama_host import-usage --from DATA_DIR --store postgresql://...
                                        copy a TinyDB data folder into PostgreSQL
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _serve(argv: Sequence[str]) -> int:
    from app import main

    return main(argv)


def _settings_table(argv: Sequence[str]) -> int:
    from .settings import settings_table

    sys.stdout.write(settings_table())
    return 0


def _import_spill(argv: Sequence[str]) -> int:
    from store.import_spill import main

    return main(argv)


def _import_usage(argv: Sequence[str]) -> int:
    from .importer import import_usage

    return import_usage(argv)


def _worker(argv: Sequence[str]) -> int:
    # Not for people: how --workers N starts each worker (ollama_host/workers.py).
    from .workers import worker_main

    return worker_main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "serve": _serve,
    "settings-table": _settings_table,
    "import-spill": _import_spill,
    "import-usage": _import_usage,
    "worker": _worker,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]](args[1:])
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
