"""The seed's API shapes, as msgspec structs: the ask, its replies, and the data of its SSE
events. These structs are the schema: requests are decoded straight into them, and the
OpenAPI document is generated from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from calls.types import ModelName
from store.records import Status, UsageRecord

Tag = Annotated[str, Meta(max_length=200, description="A free label for accounting.")]


class AskRequest(msgspec.Struct, kw_only=True):
    """The seed's body for ask_sync and ask_async."""

    agent: ModelName
    content: Annotated[str, Meta(min_length=1, description="The user's message.")]
    template: Annotated[str, Meta(description="The system prompt.")] | None = None
    user_key: (
        Annotated[
            str, Meta(max_length=500, description="Who is asking; stored only as a fingerprint.")
        ]
        | None
    ) = None
    project: Tag | None = None
    process_id: Tag | None = None
    subprocess_id: Tag | None = None
    # Beyond the seed: how to generate, passed to the model server as given (Ollama's names).
    options: (
        Annotated[
            dict[str, Any],
            Meta(
                description="Beyond the seed: model options as Ollama names them "
                "(`temperature`, `num_predict`, `num_ctx`, `seed`, `stop`, ...).",
                examples=[{"temperature": 0.2, "num_predict": 256}],
            ),
        ]
        | None
    ) = None
    think: (
        Annotated[
            bool | Literal["low", "medium", "high"],
            Meta(description="Beyond the seed: thinking on or off, or its level."),
        ]
        | None
    ) = None
    keep_alive: (
        Annotated[
            str | float,
            Meta(
                description="Beyond the seed: how long the model stays loaded after the "
                "answer (`5m`, or seconds; 0 unloads it).",
                examples=["5m"],
            ),
        ]
        | None
    ) = None
    format: (
        Annotated[
            Literal["json"] | dict[str, Any],
            Meta(description="Beyond the seed: `json`, or a JSON schema the answer follows."),
        ]
        | None
    ) = None


class Usage(msgspec.Struct, kw_only=True):
    """What one call cost; also the data of the SSE `done` event."""

    id: str
    status: Status
    model_name: str
    done_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    tokens_estimated: bool
    total_seconds: float
    ttft_seconds: float | None
    load_seconds: float | None
    prompt_eval_seconds: float | None
    eval_seconds: float | None

    @classmethod
    def of(cls, record: UsageRecord) -> Usage:
        return cls(
            id=record.id,
            status=record.status,
            model_name=record.model_name,
            done_reason=record.done_reason,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            total_tokens=record.total_tokens,
            tokens_estimated=record.tokens_estimated,
            total_seconds=record.total_seconds,
            ttft_seconds=record.ttft_seconds,
            load_seconds=record.load_seconds,
            prompt_eval_seconds=record.prompt_eval_seconds,
            eval_seconds=record.eval_seconds,
        )


class AskReply(msgspec.Struct, kw_only=True):
    """ask_sync's answer for a client that sends `Accept: application/json`."""

    id: str
    model: str
    output: str
    thinking: str | None = None
    usage: Usage


class Ticket(msgspec.Struct):
    """A single-use stream ticket: `GET /api/v1/ai/ask_async?...&ticket=<ticket>`."""

    ticket: str
    expires_in: float


class StartEvent(msgspec.Struct, omit_defaults=True):
    """Data of the SSE `start` event: the call's id, known before any token, and a resumable
    stream's handle."""

    id: str
    model: str
    resume: (
        Annotated[
            str,
            Meta(
                description="A resumable stream's handle (a secret): "
                "`GET /api/v1/ai/resume?stream=<resume>` with `Last-Event-ID` and the same "
                "key gets the events after that one. Absent when the stream is not resumable."
            ),
        ]
        | None
    ) = None


class QueuedEvent(msgspec.Struct):
    """Data of the SSE `queued` event: the call waits for a free upstream slot. `position` 1
    is next; `ahead` calls would be served before it. Sent again whenever either changes, at
    most twice a second."""

    position: int
    ahead: int


class LoadingEvent(msgspec.Struct):
    """Data of the SSE `loading` event: the upstream the call goes to does not have the model
    loaded, and loads it first (seconds to minutes)."""

    upstream: str
    model: str


class TokenEvent(msgspec.Struct, omit_defaults=True):
    """Data of an SSE `token` event: one chunk exactly as Ollama sent it."""

    content: str
    thinking: str | None = None


class StreamRequest(AskRequest, kw_only=True):
    """ask_async's body: the ask, and whether its stream may be resumed."""

    resumable: (
        Annotated[
            bool,
            Meta(
                description="Whether the stream survives a dropped connection: the answer "
                "goes on for `--resume-window` seconds after the client left, for a "
                "reconnect with `Last-Event-ID` (default: true for GET, false for POST)."
            ),
        ]
        | None
    ) = None


class StreamQuery(StreamRequest, kw_only=True):
    """The GET stream's query: the ask's fields, and a ticket in place of a header."""

    ticket: str | None = None


class ResumeQuery(msgspec.Struct, kw_only=True):
    """A resume's query: which stream, and (for an EventSource) a ticket and where to go on."""

    stream: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=100,
            description="The stream's handle: `resume` in its `start` event.",
        ),
    ]
    ticket: str | None = None
    last_event_id: (
        Annotated[
            str,
            Meta(
                max_length=100,
                description="The id of the last event received, when the client cannot "
                "send the `Last-Event-ID` header (a new EventSource); the header wins.",
            ),
        ]
        | None
    ) = None
