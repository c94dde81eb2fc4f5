"""OpenAI's error shape, `{"error": {message, type, param, code}}`, with the statuses the
`openai` library maps to its exceptions (400 BadRequestError for any unreadable request, where
the gateway's own API says 422)."""

from __future__ import annotations

from starlette.responses import Response

from access.origins import OLLAMA_DEFAULTS
from calls.errors import CallError

from ..common import JSON
from .schemas import OpenAIError, OpenAIErrorDetail

PREFIX = "/v1/"
# Browser origins this front takes besides --cors-origins: Ollama's defaults, as Ollama's own
# OpenAI-compatible API does (access/origins.py).
BROWSER_ORIGINS = OLLAMA_DEFAULTS

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class _BadParam(CallError):
    """A 400 that names the parameter at fault, as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(400, "invalid_request", message)
        self.param = param


def bad(message: str, *, param: str | None = None) -> CallError:
    return _BadParam(message, param)


def error_response(error: CallError, *, param: str | None = None) -> Response:
    """OpenAI's error shape, with the statuses the `openai` library maps to its exceptions
    (400 BadRequestError for any unreadable request, where the gateway's own API says 422).
    `param` names the field at fault where the error itself does not."""
    status = 400 if error.status == 422 else error.status
    kind = _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    param = getattr(error, "param", None) or param
    if param is None and "- at `$." in error.message:
        # msgspec's messages end with the path of the field at fault.
        param = error.message.rsplit("- at `$.", 1)[1].rstrip("`")
    headers = dict(error.headers)
    if error.request_id:
        headers["X-Request-Id"] = error.request_id
    body = OpenAIError(
        OpenAIErrorDetail(message=error.message, type=kind, param=param, code=error.code)
    )
    return JSON(body, status_code=status, headers=headers)


def stream_error(error: CallError) -> OpenAIError:
    """An error after a stream began: its body as a last `data:` event."""
    status = error.status
    kind = _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return OpenAIError(OpenAIErrorDetail(message=error.message, type=kind, code=error.code))
