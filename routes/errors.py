"""The gateway's own error shape, `{"error": {status, code, message, request_id}}`: every error
of the seed's API, the admin API and the pages, HTTP bodies and SSE `error` events alike. The
fronts of other APIs answer in their API's shape (each front's errors.py)."""

from __future__ import annotations

import msgspec

from calls.errors import CallError

from . import request_id
from .common import JSON


class ErrorDetail(msgspec.Struct, kw_only=True):
    status: int
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(msgspec.Struct):
    """Every error, everywhere: HTTP bodies and the SSE `error` event."""

    error: ErrorDetail


def error_body(error: CallError) -> ErrorBody:
    return ErrorBody(
        ErrorDetail(
            status=error.status, code=error.code, message=error.message, request_id=error.request_id
        )
    )


def with_request_id(error: CallError) -> CallError:
    """The error, naming the request it ended (the id of its record, for an ask)."""
    if error.request_id is None and (info := request_id.current.get()) is not None:
        error.request_id = info.id
    return error


def error_response(error: CallError) -> JSON:
    """The gateway's own error shape: the seed's API and the admin API."""
    with_request_id(error)
    headers = dict(error.headers)
    if error.request_id:
        headers["X-Request-Id"] = error.request_id
    return JSON(error_body(error), status_code=error.status, headers=headers)
