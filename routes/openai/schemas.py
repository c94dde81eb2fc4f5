"""The OpenAI API's shapes, as msgspec structs: what its clients send and what it answers.

Bodies are strict, as OpenAI's are: an unknown field is a 400, while every documented field
is accepted, and those the gateway cannot honour (`logit_bias`, `logprobs`, `user`, ...) are
ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from calls.types import ModelName

# -- what clients send -------------------------------------------------------------------------

# OpenAI's reasoning efforts as Ollama's think levels (Ollama's own mapping).
THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
Effort = Annotated[str, Meta(extra_json_schema={"enum": list(THINK)})]


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


# A data: URL of a jpeg, png or webp image in base64: documented, and checked by decoding
# it, which gives the clearer error.
DATA_URL = (
    r"^data:(image/(jpeg|jpg|png|webp))?;base64,"
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
)
Url = Annotated[
    str,
    Meta(
        description="A data: URL (image URLs on the web are not fetched).",
        extra_json_schema={"pattern": DATA_URL},
    ),
]


class ImageUrl(msgspec.Struct, kw_only=True):
    url: Url
    detail: str | None = None


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    # Ollama also takes the URL as a plain string.
    image_url: ImageUrl | Url


class RefusalPart(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = TextPart | ImagePart | RefusalPart


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: Annotated[
        str,
        Meta(
            description="A JSON object, as text.",
            extra_json_schema={
                "contentMediaType": "application/json",
                "contentSchema": {"type": "object"},
            },
        ),
    ] = "{}"


class ToolCallIn(msgspec.Struct, kw_only=True):
    function: FunctionCall
    id: str | None = None
    type: Literal["function"] = "function"


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    # Ollama's extension: an earlier answer's reasoning.
    reasoning: str | None = None
    audio: Any = None
    function_call: Any = None


class TextFormat(msgspec.Struct, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class JsonSchema(msgspec.Struct, kw_only=True):
    name: str | None = None
    description: str | None = None
    # The schema the answer must follow: a JSON object.
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class JsonSchemaFormat(msgspec.Struct, tag_field="type", tag="json_schema"):
    json_schema: JsonSchema


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class Reasoning(msgspec.Struct, kw_only=True):
    effort: Effort | None = None


Temperature = Annotated[float, Meta(ge=0, le=2)]
TopP = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
Tokens = Annotated[int, Meta(ge=1)]
Stop = str | Annotated[list[str], Meta(max_length=4)]


class _Sampling(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What completions and chat completions share."""

    model: ModelName
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Stop | None = None
    seed: int | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    n: (
        Annotated[int, Meta(description="Only 1.", extra_json_schema={"minimum": 1, "maximum": 1})]
        | None
    ) = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def options(self, max_tokens: int | None) -> dict[str, Any]:
        """Ollama's options for these fields, as Ollama's own /v1 sets them."""
        options: dict[str, Any] = {}
        if self.stop is not None:
            options["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        options["temperature"] = 1.0 if self.temperature is None else self.temperature
        if self.seed is not None:
            options["seed"] = self.seed
        if self.frequency_penalty is not None:
            options["frequency_penalty"] = self.frequency_penalty
        if self.presence_penalty is not None:
            options["presence_penalty"] = self.presence_penalty
        options["top_p"] = 1.0 if self.top_p is None else self.top_p
        return options

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/chat/completions, as OpenAI takes it."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: Tokens | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Effort | None = None
    reasoning: Reasoning | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: Any = None
    safety_identifier: str | None = None
    verbosity: str | None = None
    web_search_options: Any = None
    moderation: Any = None
    function_call: Any = None
    functions: Any = None


class CompletionRequest(_Sampling, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/completions (OpenAI's legacy completions), as OpenAI takes it."""

    prompt: str | Annotated[list[str], Meta(min_length=1, max_length=1)]
    suffix: str | None = None
    best_of: Annotated[int, Meta(ge=1, le=1)] | None = None
    echo: Literal[False] | None = None
    logprobs: int | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/embeddings: texts only (token arrays are not supported)."""

    model: ModelName
    input: str | Annotated[list[str], Meta(min_length=1)]
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None


# -- what it answers ---------------------------------------------------------------------------


class OpenAIUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallFunctionOut(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function"
    function: ToolCallFunctionOut
    # Only in a stream's deltas, where it says which call a delta belongs to.
    index: int | msgspec.UnsetType = msgspec.UNSET


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | msgspec.UnsetType = msgspec.UNSET
    refusal: None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: OpenAIUsage
    system_fingerprint: str = "fp_ollama"


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One `data:` event of a streamed chat completion."""

    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: OpenAIUsage | None = None
    system_fingerprint: str = "fp_ollama"


class TextChoice(msgspec.Struct, kw_only=True):
    text: str
    index: int = 0
    finish_reason: str | None = None
    logprobs: None = None


class TextCompletion(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A whole completion, or one `data:` event of a streamed one."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: OpenAIUsage | None = None
    system_fingerprint: str = "fp_ollama"


class Embedding(msgspec.Struct, kw_only=True):
    object: str = "embedding"
    # Floats, or (encoding_format "base64") their little-endian float32 bytes in base64.
    embedding: list[float] | str
    index: int


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Model]


class OpenAIErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(msgspec.Struct):
    """Every error on this front, as OpenAI writes it."""

    error: OpenAIErrorDetail
