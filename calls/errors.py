"""The gateway's error vocabulary, shared by every front, upstream kind and check.

Two families:

- `UpstreamError`: what went wrong with a model server. Each upstream kind catches its own
  transport's exceptions where they are born and raises one of these, so the pipeline never
  sees a socket, an httpx exception or a server's error format.
- `CallError`: a call refused or failed, as a client is told: a stable `code`, a message that
  says what to do, and the HTTP status it is answered with. Each front renders it in its own
  shape (the seed's `{"error": {...}}`, Ollama's `{"error": "..."}`, OpenAI's).
"""

from __future__ import annotations

import math

import msgspec

from .types import GpuUse


class CallError(Exception):
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


class RateLimited(CallError):
    """A rate, token or stream limit is reached; `Retry-After` says when to try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            429, "rate_limited", message, headers={"Retry-After": str(self.retry_after)}
        )


class OverBudget(RateLimited):
    """A GPU budget (per day or per month) is spent; `Retry-After` says when it resets."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after)
        self.code = "gpu_budget_spent"


def unauthorized(message: str) -> CallError:
    return CallError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def shutting_down(call_id: str | None = None) -> CallError:
    return CallError(
        503,
        "server_shutdown",
        "the gateway is shutting down and could not finish this answer in time; "
        "ask again in a moment",
        headers={"Retry-After": "5"},
        request_id=call_id,
    )


def internal(call_id: str | None = None) -> CallError:
    return CallError(
        500, "internal_error", "the gateway failed unexpectedly; see its log", request_id=call_id
    )


# -- upstream failures ----------------------------------------------------------------------


class UpstreamError(Exception):
    """Base class: every failure talking to a model server."""

    status = 502
    code = "upstream_error"
    # Set by an upstream that chose among several: which one failed, after how many tries.
    upstream: str | None = None
    attempts: int | None = None
    # Seconds after which trying again makes sense, when the gateway measured it.
    retry_after: int | None = None
    # Set by a router: the GPU time the failed call used on that upstream.
    gpu: GpuUse | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamUnavailable(UpstreamError):
    """The server could not be reached, or dropped the connection."""

    code = "upstream_unavailable"


class UpstreamUnreachable(UpstreamUnavailable):
    """No connection to the server could be made at all (refused, no route, a connect that
    timed out): it is down, unlike a connection that broke, which may be one connection."""


class UpstreamTimeout(UpstreamError):
    """The server accepted the connection but did not answer in time."""

    status = 504
    code = "upstream_timeout"


class ModelNotFound(UpstreamError):
    """The server does not have this model."""

    status = 404
    code = "model_not_found"


class UpstreamBusy(UpstreamError):
    """The server's queue is full."""

    status = 503
    code = "upstream_busy"


class KeyQueueFull(UpstreamError):
    """The caller's key has as many calls waiting for a slot as it may (--queue-per-key)."""

    status = 429
    code = "queue_full"


class UpstreamRejected(UpstreamError):
    """The server found the request itself wrong."""

    status = 400
    code = "upstream_rejected"


class UpstreamFailed(UpstreamError):
    """The server reported a failure of its own: a 5xx, or an error mid-stream."""


class UpstreamWrongAddress(UpstreamError):
    """The server has no such route (a 404 that is not about a model): the configured address
    is probably not the server's root, or not that kind of server."""

    code = "upstream_wrong_address"


class UpstreamUnauthorized(UpstreamError):
    """The server refused the gateway itself (401, 403): a wrong key for that upstream, or an
    Ollama that must be signed in to ollama.com for a cloud model."""

    code = "upstream_unauthorized"


class CloudModelRefused(UpstreamError):
    """A cloud model (run on ollama.com under the server's account) while none is allowed."""

    status = 403
    code = "cloud_model_not_allowed"


class UpstreamBadResponse(UpstreamError):
    """The server answered with something that is not its documented wire format, or more
    than the gateway's bounds allow."""

    code = "upstream_bad_response"


def call_error(exc: Exception, call_id: str | None = None) -> CallError:
    """Any failure the fronts expect, as a CallError."""
    if isinstance(exc, CallError):
        error = exc
    elif isinstance(exc, UpstreamError):
        headers = None
        if exc.retry_after is not None:
            headers = {"Retry-After": str(exc.retry_after)}
        elif exc.status == 503:
            headers = {"Retry-After": "5"}
        error = CallError(exc.status, exc.code, exc.message, headers=headers)
    elif isinstance(exc, msgspec.ValidationError):
        # ValidationError is a DecodeError: test it first.
        error = CallError(422, "invalid_request", str(exc))
    elif isinstance(exc, msgspec.DecodeError):
        error = CallError(400, "invalid_json", f"the body is not valid JSON: {exc}")
    else:
        raise TypeError(f"no call error for {type(exc).__name__}") from exc
    if call_id is not None and error.request_id is None:
        error.request_id = call_id
    return error
