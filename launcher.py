"""Install the gateway as a systemd service: `python launcher.py install` (ollama_host.launcher)."""

from __future__ import annotations

import sys

from ollama_host.launcher import main

if __name__ == "__main__":
    sys.exit(main())
