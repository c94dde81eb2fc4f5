"""Ollama Host, the program: its settings, server, request log and command line.

The gateway's parts live in packages named for their job: `calls` (the call pipeline),
`access` (who may ask), `routes` (the fronts and the admin API), `ollama_client` (one kind of
upstream), `store` (usage records). This package holds what runs them as one program.
"""

from __future__ import annotations

__version__ = "0.2.0"
