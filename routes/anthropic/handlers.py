"""Anthropic's Messages API at /v1/messages: a message, whole or streamed, and a token count;
the handlers and their routes."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from access.identity import Credentials
from calls.errors import CallError, unauthorized
from calls.pipeline import Call
from calls.types import CallRequest

from ..asking import answer_headers, ask_of, credentials_of, whole
from ..common import JSON, decode_body, gateway_of
from ..streaming import CallStreamResponse, stream_response
from .errors import bad
from .framing import MessageEvents, message_of
from .schemas import CountTokensRequest, MessagesRequest, TokenCount
from .translate import count_call, message_call

FRONT = "anthropic"
T = TypeVar("T")

# The versions of the API Anthropic answers (`anthropic-version`, required, as Anthropic's):
# 2023-06-01 is Claude Code's and curl's; 2026-10-21 the `anthropic` SDK 2.x's. Each is
# answered in the same shape (the later one adds no field the gateway could fill).
VERSIONS = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})


def check_version(request: Request) -> None:
    version = request.headers.get("anthropic-version")
    if version is None:
        raise bad("anthropic-version: header is required; send `anthropic-version: 2023-06-01`")
    if version.strip() not in VERSIONS:
        raise bad(
            f"anthropic-version: {version!r} is not a version of this API; "
            f"send one of {', '.join(sorted(VERSIONS))}"
        )


# msgspec's words for a tagged union's unknown tag (a block's, a source's, a tool choice's).
_UNKNOWN_TYPE = re.compile(r"^Invalid value (.+) - at `\$\.(.+)\.type`$")
_BLOCK = re.compile(r"content\.\d+$")
_BLOCKS = "text, image, tool_use, tool_result, thinking and redacted_thinking"


async def _decode(request: Request, kind: type[T]) -> T:
    """The body, or a 400 whose message names an unknown `type` as Anthropic's do."""
    try:
        return await decode_body(request, kind)
    except CallError as error:
        found = _UNKNOWN_TYPE.match(error.message)
        if found is None:
            raise
        where = re.sub(r"\[(\d+)\]", r".\1", found[2])
        takes = f" (content blocks here are {_BLOCKS})" if _BLOCK.search(where) else ""
        raise bad(f"{where}.type: {found[1]} is not a type this API takes{takes}") from None


def credentials_from(request: Request, user_id: str | None) -> Credentials:
    """The key from `x-api-key` (what the Anthropic SDKs send) or `Authorization: Bearer`
    (Claude Code's ANTHROPIC_AUTH_TOKEN). Without a key, `metadata.user_id` stands where the
    seed's `user_key` does: while no key exists it groups the caller's calls (the record's
    `user`, a keyed fingerprint)."""
    credentials = credentials_of(request)
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return msgspec.structs.replace(credentials, bearer=key)
    if credentials.bearer is None and user_id:
        return msgspec.structs.replace(credentials, user_key=user_id)
    return credentials


def anthropics_words(error: CallError, credentials: Credentials) -> CallError:
    """Anthropic's words for a missing key, not the seed's `user_key` advice; any other
    error as it is."""
    if error.status == 401 and credentials.bearer is None and credentials.session is None:
        return unauthorized(
            "x-api-key header is required: send your gateway API key as `x-api-key` "
            "(ANTHROPIC_API_KEY) or as `Authorization: Bearer` (ANTHROPIC_AUTH_TOKEN)"
        )
    return error


async def _call(
    request: Request, neutral: CallRequest, credentials: Credentials, *, stream: bool
) -> Call[CallRequest]:
    ask = ask_of(request, FRONT, neutral, stream=stream, credentials=credentials)
    try:
        return await gateway_of(request).call(ask)
    except CallError as error:
        worded = anthropics_words(error, credentials)
        if worded is error:
            raise
        raise worded from None


async def messages(request: Request) -> Response | CallStreamResponse:
    check_version(request)
    body = await _decode(request, MessagesRequest)
    user_id = body.metadata.user_id if body.metadata else None
    stream = bool(body.stream)
    call = await _call(
        request, message_call(body), credentials_from(request, user_id), stream=stream
    )
    if stream:
        return stream_response(request, call, MessageEvents(call.id, body.model))
    finished = await whole(request, call.answer())
    reply = message_of("msg_" + call.id, body.model, finished.result)
    return JSON(reply, headers={**answer_headers(call), "request-id": call.id})


async def count_tokens(request: Request) -> Response:
    check_version(request)
    body = await _decode(request, CountTokensRequest)
    call = await _call(request, count_call(body), credentials_from(request, None), stream=False)
    finished = await whole(request, call.answer())
    # As a message's usage says it: Ollama leaves a count of 0 out (Go's omitempty).
    tokens = finished.result.metrics.input_tokens or 0
    return JSON(TokenCount(tokens), headers={**answer_headers(call), "request-id": call.id})


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
