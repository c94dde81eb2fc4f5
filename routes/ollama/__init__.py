"""Ollama's own API at /api/*: a drop-in address for every client that speaks it.

Bodies are decoded into Ollama's shapes (`schemas`), translated into neutral calls
(`translate`), and the answers framed as Ollama frames them (`framing`): NDJSON lines while
streaming, one object otherwise, durations in nanoseconds; errors as `{"error": "..."}`
(`errors`). The handlers and routes are in `handlers`, the document in `openapi`. The
pipeline knows nothing of this.
"""

from __future__ import annotations

from .errors import BROWSER_ORIGINS, BROWSER_PATHS, PREFIX, error_response
from .handlers import FRONT, routes
from .openapi import openapi

__all__ = [
    "BROWSER_ORIGINS",
    "BROWSER_PATHS",
    "FRONT",
    "PREFIX",
    "error_response",
    "openapi",
    "routes",
]
