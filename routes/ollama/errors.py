"""Ollama's error shape, `{"error": "..."}`, and its statuses: its handlers answer 400 to any
request they cannot read, where the gateway's own API says 422 for well-formed JSON of the
wrong shape."""

from __future__ import annotations

from starlette.responses import Response

from access.origins import OLLAMA_DEFAULTS
from calls.errors import CallError

from ..common import JSON
from .schemas import OllamaError

PREFIX = "/api/"
# Browser origins this front takes besides --cors-origins: Ollama's own defaults, so that
# editor plugins and local apps written against Ollama work unchanged (access/origins.py).
# `/` answers anything but a browser asking for HTML as Ollama's own does (routes/page.py).
BROWSER_ORIGINS = OLLAMA_DEFAULTS
BROWSER_PATHS = ("/",)


def error_response(error: CallError) -> Response:
    """An error as Ollama answers it."""
    headers = dict(error.headers)
    if error.request_id:
        headers["X-Request-Id"] = error.request_id
    status = 400 if error.status == 422 else error.status
    return JSON(OllamaError(error.message), status_code=status, headers=headers)


def bad(message: str) -> CallError:
    return CallError(400, "invalid_request", message)
