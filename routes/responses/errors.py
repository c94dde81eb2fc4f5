"""OpenAI's error shape for /v1/responses: the OpenAI front's own (`{"error": {message, type,
param, code}}`, with the statuses the `openai` library maps to its exceptions), `param` naming
the field at fault, as OpenAI's Responses API does."""

from __future__ import annotations

import re

from starlette.responses import Response

from calls.errors import CallError

from ..openai import errors as openai_errors
from ..openai.errors import BROWSER_ORIGINS, bad

# Longer than the OpenAI front's "/v1/", so the app renders this path's errors here: the same
# shape today, and a place for the Responses API's own should it ever differ.
PREFIX = "/v1/responses"

__all__ = ["BROWSER_ORIGINS", "PREFIX", "bad", "error_response", "stateless"]


# msgspec's message for a field the struct does not have, and where it was.
_UNKNOWN = re.compile(r"unknown field `([^`]+)`(?: - at `\$\.?([^`]*)`)?")


def error_response(error: CallError) -> Response:
    """The OpenAI front's error response, with `param` also naming an unknown field, as
    OpenAI's "Unknown parameter" errors do."""
    found = _UNKNOWN.search(error.message)
    if found is None:
        return openai_errors.error_response(error)
    name, where = found.groups()
    return openai_errors.error_response(error, param=f"{where}.{name}" if where else name)


def stateless(what: str, param: str) -> CallError:
    """A 400 for what would need the gateway to keep responses."""
    return bad(
        f"{what}: the gateway is stateless and stores no responses (as Ollama's "
        "/v1/responses); send the whole conversation as `input` items each time, and "
        "`store: false` or no `store`",
        param=param,
    )
