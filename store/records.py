"""The usage record and the dashboard query: the store's whole vocabulary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

Status = Literal["ok", "error", "cancelled"]


class InputMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str
    # How many images the message carried (never the images themselves).
    images: int | None = None
    tool_calls: list[dict[str, Any]] | None = None


class UsageRecord(msgspec.Struct, kw_only=True):
    """One call. The first fields are the seed's, with the seed's names."""

    date: str
    total_seconds: float
    total_tokens: int | None
    input_tokens: int | None
    output_tokens: int | None
    model_name: str
    input: list[InputMessage]
    output: str
    project: str | None = None
    process_id: str | None = None
    subprocess_id: str | None = None
    # Ours: enough to tell what happened and to explain a slow call.
    id: str
    status: Status
    error: str | None = None
    error_code: str | None = None
    streamed: bool = False
    done_reason: str | None = None
    ttft_seconds: float | None = None
    load_seconds: float | None = None
    prompt_eval_seconds: float | None = None
    eval_seconds: float | None = None
    upstream_seconds: float | None = None
    # True when Ollama never sent its counts (a cancelled or failed stream) and
    # output_tokens is the number of chunks relayed, one token each.
    tokens_estimated: bool = False
    # A keyed fingerprint of the caller's user_key or API key; never the key itself.
    user: str | None = None
    # The API key used, by its public id and label ("admin" for the page's playground).
    key_id: str | None = None
    key_label: str | None = None
    # How the call came in: the front (`seed`, `ollama`, `openai`) and the path it used.
    front: str | None = None
    endpoint: str | None = None
    # Which upstream answered, and how many upstreams were tried to get an answer.
    upstream: str | None = None
    attempts: int | None = None
    # The model's reasoning, when it sent any, and the tools it asked to call.
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    # The stored output (and thinking) keep at most --max-record-output characters; when cut,
    # output_truncated is true and output_chars is the whole answer's length.
    output_truncated: bool = False
    output_chars: int | None = None
    # Embeddings: how many inputs were embedded (their vectors are never stored).
    input_count: int | None = None
    # The fair queue: seconds the call waited in the gateway for an upstream slot (0: one was
    # free; None: it never reached one), and the class it was served at.
    queue_seconds: float | None = None
    priority: str | None = None
    # GPU time the call used on its upstream (upstreams.gputime: the upstream's own figure,
    # or the time it held a slot, shared among the calls running beside it), and its price
    # at the upstream's `cost` per GPU-hour (None: not priced).
    gpu_seconds: float | None = None
    cost: float | None = None
    # -- monitoring: where the call's time went, and whether it paid for a model load.
    # The gateway's own part of the call: from the request's first byte to the record, less
    # the queue and the time spent waiting on the upstream (docs/monitoring.md).
    gateway_seconds: float | None = None
    # Whether the upstream loaded the model for this call (it was not resident before),
    # and which model, if any, it unloaded to make room.
    cold_start: bool | None = None
    evicted: str | None = None


class UsageQuery(msgspec.Struct, kw_only=True, frozen=True):
    project: str | None = None
    process_id: str | None = None
    subprocess_id: str | None = None
    model: str | None = None
    status: Status | None = None
    since: datetime | None = None
    until: datetime | None = None
    front: str | None = None
    endpoint: str | None = None
    upstream: str | None = None
    # Cursors: only records older than (before) or newer than (after) the record with this id.
    before: str | None = None
    after: str | None = None
    offset: int = 0
    limit: int = 100


def iso(moment: datetime) -> str:
    """The one date format on disk: fixed width, UTC, so strings sort as times do."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class Totals(msgspec.Struct, kw_only=True):
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # Ollama's own time (total_duration), summed: where the GPU time went.
    model_seconds: float = 0.0
    errors: int = 0
    cancelled: int = 0
    # GPU time (upstreams.gputime), the part of it that was model loading, and the cost of
    # the calls on priced upstreams.
    gpu_seconds: float = 0.0
    gpu_load_seconds: float = 0.0
    cost: float = 0.0


class GroupStats(msgspec.Struct, kw_only=True):
    """One row of a breakdown (by model, project, process/subprocess, front, endpoint or
    upstream)."""

    key: str
    calls: int
    input_tokens: int
    output_tokens: int
    total_seconds: float
    model_seconds: float
    errors: int
    p50_seconds: float | None
    p95_seconds: float | None
    p50_ttft_seconds: float | None
    # Generation speed: output tokens over Ollama's eval time, for calls that report both.
    tokens_per_second: float | None
    # GPU time, the part of it that was model loading, and its cost (priced upstreams).
    gpu_seconds: float = 0.0
    gpu_load_seconds: float = 0.0
    cost: float = 0.0


class Bucket(msgspec.Struct, kw_only=True):
    start: str  # ISO 8601 UTC, the bucket's first instant
    calls: int
    input_tokens: int
    output_tokens: int


class Stats(msgspec.Struct, kw_only=True):
    """Aggregates over every record matching a query's filters (paging fields are ignored)."""

    totals: Totals
    bucket_seconds: int
    series: list[Bucket]
    by_model: list[GroupStats]
    by_project: list[GroupStats]
    by_process: list[GroupStats]
    # How calls came in (seed, ollama, openai), by which path, and which upstream answered.
    by_front: list[GroupStats] = msgspec.field(default_factory=list)
    by_endpoint: list[GroupStats] = msgspec.field(default_factory=list)
    by_upstream: list[GroupStats] = msgspec.field(default_factory=list)
    # By API key, as its label was when the call was made ("admin": the page's playground).
    by_key: list[GroupStats] = msgspec.field(default_factory=list)
