"""`python -m ollama_host ...`: the same program as `python app.py ...` (ollama_host/program.py).

The program starts in app.py, the composition root, which nothing imports; so this runs that
file, in this process's place.
"""

from __future__ import annotations

import os
import sys

from .program import APP


def main() -> None:
    os.execv(sys.executable, [sys.executable, str(APP), *sys.argv[1:]])  # noqa: S606


if __name__ == "__main__":
    main()
