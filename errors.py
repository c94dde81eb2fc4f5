"""The gateway's error vocabulary: one shape for every failure, everywhere.

Ollama's failures arrive as `ollama_client` errors and msgspec's as Decode or
Validation errors; `api_error` turns each into an ApiError with a status, a
stable code and a message that says what to do.
"""

from __future__ import annotations

import msgspec

from ollama_client import (
    ModelNotFound,
    OllamaBadResponse,
    OllamaBusy,
    OllamaError,
    OllamaFailed,
    OllamaRejected,
    OllamaTimeout,
    OllamaUnavailable,
)
from schemas import ErrorBody, ErrorDetail


class ApiError(Exception):
    """A failure as the client sees it: status, a stable code, a message saying what to do."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        # The id of the call (and its usage record) this error ended, if any.
        self.request_id = request_id


# Ollama's failures, in the gateway's words. Order matters only for subclasses.
_OLLAMA: tuple[tuple[type[OllamaError], int, str], ...] = (
    (ModelNotFound, 404, "model_not_found"),
    (OllamaRejected, 400, "upstream_rejected"),
    (OllamaBusy, 503, "upstream_busy"),
    (OllamaUnavailable, 502, "upstream_unavailable"),
    (OllamaTimeout, 504, "upstream_timeout"),
    (OllamaFailed, 502, "upstream_error"),
    (OllamaBadResponse, 502, "upstream_bad_response"),
)


def api_error(exc: Exception) -> ApiError:
    """Translate any failure the routes expect into an ApiError."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, OllamaError):
        for kind, status, code in _OLLAMA:
            if isinstance(exc, kind):
                headers = {"Retry-After": "5"} if status == 503 else None
                return ApiError(status, code, exc.message, headers=headers)
        return ApiError(502, "upstream_error", exc.message)
    if isinstance(exc, msgspec.ValidationError):
        # ValidationError is a DecodeError: test it first.
        return ApiError(422, "invalid_request", str(exc))
    if isinstance(exc, msgspec.DecodeError):
        return ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}")
    raise TypeError(f"no API error for {type(exc).__name__}") from exc


def error_body(error: ApiError) -> ErrorBody:
    return ErrorBody(
        ErrorDetail(
            status=error.status, code=error.code, message=error.message, request_id=error.request_id
        )
    )
