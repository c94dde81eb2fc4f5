"""calls/exchange.py: every upstream kind fails the same way for the same failure of HTTP.

The two kinds had a copy each, and they drifted: only Ollama's mapped a malformed response to
`upstream_bad_response`; the OpenAI kind's made it `upstream_unavailable`, which made the
router check a healthy server again.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from calls.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from calls.types import CallRequest, Message
from calls.upstream import ModelServer
from http_transport import MalformedResponse
from ollama_client import OllamaUpstream
from openai_client import OpenAIUpstream

pytestmark = pytest.mark.anyio

URL = "http://upstream.test:1234"
KINDS: dict[str, Callable[[httpx.AsyncBaseTransport], ModelServer]] = {
    "ollama": lambda transport: OllamaUpstream(transport, URL, max_body=100),
    "openai": lambda transport: OpenAIUpstream(transport, URL, max_body=100),
}
FAILURES = [
    (httpx.ConnectError("refused"), UpstreamUnreachable, "cannot reach "),
    (httpx.ConnectTimeout("slow"), UpstreamUnreachable, "cannot reach "),
    (httpx.ReadTimeout("slow"), UpstreamTimeout, "did not answer in time"),
    (httpx.RemoteProtocolError("closed early"), UpstreamUnavailable, "failed: closed early"),
    (MalformedResponse("not HTTP"), UpstreamBadResponse, "answered malformed HTTP: not HTTP"),
    (httpx.DecodingError("not gzip"), UpstreamBadResponse, "could not be decoded"),
]


def hi() -> CallRequest:
    return CallRequest(model="m", messages=[Message("user", "hi")])


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("exception", "failure", "words"), FAILURES)
async def test_a_failure_to_send_is_the_same_error_for_every_kind(
    kind: str, exception: httpx.HTTPError, failure: type[UpstreamError], words: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    upstream = KINDS[kind](httpx.MockTransport(handler))

    with pytest.raises(UpstreamError) as raised:
        await upstream.answer(hi())

    assert type(raised.value) is failure
    assert words in raised.value.message
    assert URL in raised.value.message


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_an_answer_past_the_bound_is_a_bad_response_for_every_kind(kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 101)

    upstream = KINDS[kind](httpx.MockTransport(handler))

    with pytest.raises(UpstreamBadResponse) as raised:
        await upstream.answer(hi())

    assert "larger than 100 bytes (--max-upstream-body)" in raised.value.message
