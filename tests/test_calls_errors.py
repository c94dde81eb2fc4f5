"""calls/errors.py: the gateway's error vocabulary, and how each failure becomes what a client
is told (status, code, message, headers)."""

from __future__ import annotations

import msgspec
import pytest

from calls.errors import (
    CallError,
    ModelNotFound,
    RateLimited,
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    call_error,
    internal,
    shutting_down,
    unauthorized,
)


class Ask(msgspec.Struct):
    agent: str
    content: str


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (UpstreamUnavailable("down"), 502, "upstream_unavailable"),
        (UpstreamTimeout("slow"), 504, "upstream_timeout"),
        (ModelNotFound("no such model"), 404, "model_not_found"),
        (UpstreamBusy("queue full"), 503, "upstream_busy"),
        (UpstreamRejected("bad options"), 400, "upstream_rejected"),
        (UpstreamFailed("runner crashed"), 502, "upstream_error"),
        (UpstreamBadResponse("garbage"), 502, "upstream_bad_response"),
        (UpstreamError("something"), 502, "upstream_error"),
    ],
)
def test_each_upstream_failure_has_its_status_and_code(
    failure: UpstreamError, status: int, code: str
) -> None:
    error = call_error(failure)

    assert (error.status, error.code, error.message) == (status, code, failure.message)
    assert error.request_id is None


def test_only_a_busy_upstream_says_when_to_come_back() -> None:
    assert call_error(UpstreamBusy("full")).headers == {"Retry-After": "5"}
    assert call_error(UpstreamFailed("no")).headers == {}
    assert call_error(UpstreamTimeout("slow")).headers == {}


def test_wrong_json_is_422_with_the_path_and_broken_json_is_400() -> None:
    with pytest.raises(msgspec.ValidationError) as wrong:
        msgspec.json.decode(b'{"agent": "a", "content": 5}', type=Ask)
    with pytest.raises(msgspec.DecodeError) as broken:
        msgspec.json.decode(b'{"agent": ', type=Ask)

    invalid = call_error(wrong.value)
    malformed = call_error(broken.value)

    assert (invalid.status, invalid.code) == (422, "invalid_request")
    assert "$.content" in invalid.message
    assert (malformed.status, malformed.code) == (400, "invalid_json")
    assert malformed.message.startswith("the body is not valid JSON: ")


def test_a_call_error_passes_as_it_is_and_gets_the_call_id_only_if_it_has_none() -> None:
    mine = CallError(418, "teapot", "short and stout")
    named = CallError(418, "teapot", "short and stout", request_id="first")

    assert call_error(mine, "call-1") is mine
    assert mine.request_id == "call-1"
    assert call_error(named, "call-2").request_id == "first"
    assert call_error(UpstreamFailed("x"), "call-3").request_id == "call-3"


def test_a_failure_nobody_expected_is_not_dressed_up() -> None:
    with pytest.raises(TypeError, match="no call error for KeyError"):
        call_error(KeyError("x"))


@pytest.mark.parametrize(
    ("wait", "header"), [(0, "1"), (0.2, "1"), (1, "1"), (1.01, "2"), (59.5, "60")]
)
def test_rate_limited_says_how_long_to_wait_in_whole_seconds(wait: float, header: str) -> None:
    error = RateLimited("too many", wait)

    assert (error.status, error.code, error.message) == (429, "rate_limited", "too many")
    assert error.headers == {"Retry-After": header}
    assert error.retry_after == int(header)


def test_the_fixed_errors() -> None:
    refused = unauthorized("send a key")
    stopping = shutting_down("call-1")
    broken = internal("call-2")

    assert (refused.status, refused.code, refused.message) == (401, "unauthorized", "send a key")
    assert refused.headers == {"WWW-Authenticate": "Bearer"}
    assert (stopping.status, stopping.code, stopping.request_id) == (
        503,
        "server_shutdown",
        "call-1",
    )
    assert stopping.headers == {"Retry-After": "5"}
    assert (broken.status, broken.code, broken.request_id) == (500, "internal_error", "call-2")
    assert "Traceback" not in broken.message


def test_a_call_error_is_an_exception_with_its_message() -> None:
    error = CallError(400, "x", "what to do")

    assert str(error) == "what to do"
    assert error.headers == {}
