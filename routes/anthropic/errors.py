"""Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}`, with the statuses
and types Anthropic answers and its SDKs map to their exception classes (400
BadRequestError for any unreadable request, where the gateway's own API says 422)."""

from __future__ import annotations

from starlette.responses import Response

from access.origins import OLLAMA_DEFAULTS
from calls.errors import CallError

from ..common import JSON
from .schemas import AnthropicError, AnthropicErrorDetail

PREFIX = "/v1/messages"
# Browser origins this front takes besides --cors-origins: Ollama's defaults, as Ollama's own
# Anthropic-compatible API does (access/origins.py).
BROWSER_ORIGINS = OLLAMA_DEFAULTS

# Anthropic's error types by status (docs.anthropic.com, "Errors").
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def _status(error: CallError) -> int:
    return 400 if error.status == 422 else error.status


def bad(message: str) -> CallError:
    """A 400 `invalid_request_error`."""
    return CallError(400, "invalid_request", message)


def error_body(error: CallError) -> AnthropicError:
    status = _status(error)
    kind = _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return AnthropicError(
        error=AnthropicErrorDetail(type=kind, message=error.message), request_id=error.request_id
    )


def error_response(error: CallError) -> Response:
    """Anthropic's error shape and status (the request's id as `request-id` too, where the
    Anthropic SDKs look for it)."""
    headers = dict(error.headers)
    if error.request_id:
        headers["X-Request-Id"] = headers["request-id"] = error.request_id
    return JSON(error_body(error), status_code=_status(error), headers=headers)
