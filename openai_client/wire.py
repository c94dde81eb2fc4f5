"""The OpenAI-compatible wire format (OpenAI's API reference; llama.cpp's server README for
what llama-server adds), as msgspec structs: the only place that knows it.

Servers differ in the details, so everything is optional: vLLM may send a usage-only chunk
with `choices: null`; llama-server adds `timings`; reasoning models send their thinking as
`reasoning_content` (DeepSeek, llama-server, vLLM) or `reasoning` (newer vLLM).
"""

from __future__ import annotations

from typing import Any

import msgspec


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    # A JSON text, streamed in fragments.
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    """A streamed choice's `delta`, or a whole answer's `message`."""

    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class Choice(msgspec.Struct):
    delta: Delta | None = None
    message: Delta | None = None
    # /v1/completions
    text: str | None = None
    finish_reason: str | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Timings(msgspec.Struct):
    """llama-server's own account of an answer, in milliseconds."""

    prompt_n: int | None = None
    prompt_ms: float | None = None
    predicted_n: int | None = None
    predicted_ms: float | None = None


class ErrorInfo(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: int | str | None = None


class Chunk(msgspec.Struct):
    """One `data:` line of a streamed answer, or a whole answer."""

    choices: list[Choice] | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    error: ErrorInfo | str | None = None


class ErrorReply(msgspec.Struct):
    """An error body: OpenAI's `{"error": {...}}`, a bare `{"error": "..."}`, or vLLM's
    `{"object": "error", "message": ...}`."""

    error: ErrorInfo | str | None = None
    message: str | None = None


class ModelList(msgspec.Struct):
    data: list[dict[str, Any]] = msgspec.field(default_factory=list)
    # llama-server also lists its models in Ollama's shape, with their capabilities.
    models: list[dict[str, Any]] | None = None


class Status(msgspec.Struct):
    """llama-server's router mode: whether a model is loaded now."""

    value: str | None = None


class Meta(msgspec.Struct):
    """llama-server's `meta` of a model: its weights, as the GGUF file says."""

    n_params: int | None = None
    size: int | None = None
    n_ctx_train: int | None = None
    n_ctx: int | None = None
    ftype: str | None = None


class Architecture(msgspec.Struct):
    input_modalities: list[str] | None = None


class ModelEntry(msgspec.Struct):
    """One model of /v1/models: OpenAI's id, created and owned_by, and what llama-server
    (meta, status, architecture) and vLLM (max_model_len) add."""

    id: str
    created: int | None = None
    owned_by: str | None = None
    status: Status | None = None
    meta: Meta | None = None
    architecture: Architecture | None = None
    max_model_len: int | None = None


class Capable(msgspec.Struct):
    """llama-server's Ollama-shaped entry: the capabilities it reports."""

    model: str = ""
    capabilities: list[str] | None = None


class Embedding(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class EmbeddingReply(msgspec.Struct):
    data: list[Embedding] = msgspec.field(default_factory=list)
    usage: Usage | None = None


class Props(msgspec.Struct):
    """llama-server's GET /props, for its build as a version."""

    build_info: str | None = None
    # The requests it serves at once (its --parallel): the gateway's default cap for it.
    total_slots: int | None = None
