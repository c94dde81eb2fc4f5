"""Ollama's API shapes, as msgspec structs: what its clients send and what it answers. These
structs are also what /openapi.json documents.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from calls.types import Generation, Message, ModelName, ToolCall

# -- what clients send -------------------------------------------------------------------------

# "json", "" (none), or a JSON schema the answer must follow.
Format = Literal["json", ""] | dict[str, Any]
Think = bool | Literal["low", "medium", "high", "max"]
# A duration: "5m", "1h30m", "-1" (forever), or a number of seconds.
KeepAlive = str | float
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]
# Base64 as Ollama decodes it (standard alphabet, padded). Documented, and checked by decoding
# it, which gives the clearer error.
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Image = Annotated[
    str,
    Meta(
        description="An image, in base64 without a `data:` prefix.",
        extra_json_schema={"pattern": BASE64, "contentEncoding": "base64"},
    ),
]


class ChatMessage(msgspec.Struct, kw_only=True):
    """One message of a chat, as Ollama takes it."""

    role: str
    content: str = ""
    thinking: str | None = None
    images: list[Image] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def neutral(self) -> Message:
        return Message(
            self.role,
            self.content,
            thinking=self.thinking,
            images=self.images,
            tool_calls=self.tool_calls,
            tool_name=self.tool_name,
            tool_call_id=self.tool_call_id,
        )


class _Ask(msgspec.Struct, kw_only=True):
    """What chat and generate share. Fields Ollama ignores or does not know are ignored here
    too, as Ollama's own JSON decoding does."""

    model: ModelName
    stream: bool = True
    format: Format | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None

    def generation(self, tools: list[dict[str, Any]] | None = None) -> Generation:
        extra = {
            name: value
            for name, value in (
                ("truncate", self.truncate),
                ("shift", self.shift),
                ("logprobs", self.logprobs),
                ("top_logprobs", self.top_logprobs),
            )
            if value is not None
        }
        return Generation(
            options=self.options,
            format=self.format or None,
            think=self.think,
            keep_alive=self.keep_alive,
            tools=tools,
            extra=extra or None,
        )


class ChatRequest(_Ask, kw_only=True):
    """POST /api/chat, as Ollama takes it."""

    # Not empty: an empty chat is Ollama's request to load or unload a model, which the
    # gateway does not pass on.
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Ask, kw_only=True):
    """POST /api/generate, as Ollama takes it."""

    # Empty only with images: an empty prompt is Ollama's request to load or unload a model,
    # which the gateway does not pass on.
    prompt: Annotated[str, Meta(extra_json_schema={"minLength": 1})]
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[Image] | None = None


class EmbedBody(msgspec.Struct, kw_only=True):
    """POST /api/embed: one text or several."""

    model: ModelName
    input: str | Annotated[list[str], Meta(extra_json_schema={"minItems": 1})]
    truncate: bool | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None


class EmbeddingsBody(msgspec.Struct, kw_only=True):
    """POST /api/embeddings (Ollama's older call): one text."""

    model: ModelName
    prompt: str
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None


class ShowBody(msgspec.Struct, kw_only=True):
    """POST /api/show; `name` is the older spelling of `model`."""

    model: ModelName | None = None
    name: ModelName | None = None
    verbose: bool | None = None


# -- what it answers ---------------------------------------------------------------------------


class OutMessage(msgspec.Struct, omit_defaults=True):
    """The answer's message, as Ollama writes it: content always, the rest when present."""

    role: str
    content: str
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None


class _Final(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The metrics of a last line or a whole answer, in nanoseconds (Go's omitempty)."""

    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class ChatReply(_Final, kw_only=True):
    """A whole chat answer, or a stream's last line (with an empty message)."""

    message: OutMessage


class ChatChunk(msgspec.Struct):
    """One line of a streamed chat answer."""

    model: str
    created_at: str
    message: OutMessage
    done: bool


class GenerateReply(_Final, kw_only=True):
    """A whole completion, or a stream's last line (with an empty response)."""

    response: str
    thinking: str | None = None
    context: list[int] | None = None


class GenerateChunk(msgspec.Struct, omit_defaults=True):
    """One line of a streamed completion."""

    model: str
    created_at: str
    response: str
    done: bool
    thinking: str | None = None


class EmbedReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingReply(msgspec.Struct):
    embedding: list[float]


class ModelDetails(msgspec.Struct, kw_only=True):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class ListedModel(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One model of /api/tags, every field Ollama's own list has."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    remote_model: str | None = None
    remote_host: str | None = None


class Models(msgspec.Struct):
    """/api/tags."""

    models: list[ListedModel]


class RunningModel(msgspec.Struct, kw_only=True):
    """One model of /api/ps, every field Ollama's own list has."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class Running(msgspec.Struct):
    """/api/ps."""

    models: list[RunningModel]


class ShowReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """/api/show, every field Ollama's own answer has for a local model."""

    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
    license: str | None = None
    remote_model: str | None = None
    remote_host: str | None = None


class VersionReply(msgspec.Struct):
    version: str


class OllamaError(msgspec.Struct):
    """Every error on this front, as Ollama writes it."""

    error: str
