"""Ollama's wire format, as msgspec structs: the only place that knows it.

Every metric field may be absent (Go `omitempty`), so each is optional here and a missing
count stays unknown (None) instead of becoming zero. The gateway's own `Message` and `Piece`
have Ollama's field names, so they are encoded and decoded here as they are.
"""

from __future__ import annotations

from typing import Any

import msgspec

from calls.types import Message, Piece


class ChatRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    messages: list[Message]
    # Always sent (no default to omit): Ollama's default is true, but a field a client passed
    # through unnamed (Generation.extra) must never be able to turn streaming off.
    stream: bool
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    think: bool | str | None = None
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    stream: bool
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    think: bool | str | None = None


class EmbedRequest(msgspec.Struct, omit_defaults=True):
    model: str
    input: list[str]
    truncate: bool | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None


class ShowRequest(msgspec.Struct):
    model: str


class _Metrics(msgspec.Struct):
    done: bool = False
    done_reason: str | None = None
    error: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class ChatChunk(_Metrics):
    """One line of a streamed /api/chat answer, or the whole non-streamed answer."""

    # Ollama's message has our Piece's fields (content, thinking, tool_calls), and a role.
    message: Piece | None = None


class GenerateChunk(_Metrics):
    """One line of a streamed /api/generate answer, or the whole non-streamed answer."""

    response: str = ""
    thinking: str | None = None
    context: list[int] | None = None


class EmbedReply(msgspec.Struct):
    embeddings: list[list[float]] = msgspec.field(default_factory=list)
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class ErrorReply(msgspec.Struct):
    error: str = ""
    # With a 401 for a cloud model while the server is not signed in to ollama.com.
    signin_url: str = ""


class Details(msgspec.Struct):
    """A model's `details` in /api/tags, /api/ps and /api/show."""

    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class Listed(msgspec.Struct):
    """One model of /api/tags, or (with the last three fields) of /api/ps."""

    name: str = ""
    model: str = ""
    modified_at: str | None = None
    size: int | None = None
    digest: str | None = None
    details: Details | None = None
    remote_model: str | None = None
    remote_host: str | None = None
    expires_at: str | None = None
    size_vram: int | None = None
    context_length: int | None = None


class RawTags(msgspec.Struct):
    """/api/tags and /api/ps with each model as the server described it."""

    models: list[dict[str, Any]] = msgspec.field(default_factory=list)


class Shown(msgspec.Struct):
    """/api/show's answer, the fields the gateway has names for."""

    modelfile: str | None = None
    parameters: str | None = None
    template: str | None = None
    license: str | None = None
    details: Details | None = None
    model_info: dict[str, Any] | None = None
    capabilities: list[str] | None = None
    modified_at: str | None = None
    remote_model: str | None = None
    remote_host: str | None = None


class Version(msgspec.Struct):
    version: str = ""
