"""Anthropic's Messages API shapes, as msgspec structs: what its clients send and what it
answers.

Content blocks are strict (an unknown block type is a 400, as Anthropic's is), while fields
the gateway has no use for (`cache_control`, `citations`, `service_tier`, beta fields such as
`context_management`) are accepted and ignored: Claude Code sends new ones with each release.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from calls.types import ModelName

# -- what clients send -------------------------------------------------------------------------


class TextBlockParam(msgspec.Struct, tag_field="type", tag="text", kw_only=True):
    text: str
    cache_control: Any = None
    citations: Any = None


class Base64ImageSource(msgspec.Struct, tag_field="type", tag="base64", kw_only=True):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLImageSource(msgspec.Struct, tag_field="type", tag="url", kw_only=True):
    url: str


class ImageBlockParam(msgspec.Struct, tag_field="type", tag="image", kw_only=True):
    source: Base64ImageSource | URLImageSource
    cache_control: Any = None


class ToolUseBlockParam(msgspec.Struct, tag_field="type", tag="tool_use", kw_only=True):
    id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    cache_control: Any = None


class ToolResultBlockParam(msgspec.Struct, tag_field="type", tag="tool_result", kw_only=True):
    tool_use_id: str
    content: str | list[TextBlockParam | ImageBlockParam] | None = None
    is_error: bool | None = None
    cache_control: Any = None


class ThinkingBlockParam(msgspec.Struct, tag_field="type", tag="thinking", kw_only=True):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlockParam(
    msgspec.Struct, tag_field="type", tag="redacted_thinking", kw_only=True
):
    data: str


ContentBlockParam = (
    TextBlockParam
    | ImageBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam
    | ThinkingBlockParam
    | RedactedThinkingBlockParam
)


class MessageParam(msgspec.Struct, kw_only=True):
    # A `system` message (text only) may stand between turns, as Claude Code sends them.
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlockParam]


class ToolParam(msgspec.Struct, kw_only=True):
    """A tool the model may call. Anthropic's own server tools (`web_search_...`, with a
    `type` other than `custom`) have no schema and are not passed on."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    cache_control: Any = None


class ToolChoiceAuto(msgspec.Struct, tag_field="type", tag="auto", kw_only=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(msgspec.Struct, tag_field="type", tag="any", kw_only=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(msgspec.Struct, tag_field="type", tag="tool", kw_only=True):
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(msgspec.Struct, tag_field="type", tag="none", kw_only=True):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingEnabled(msgspec.Struct, tag_field="type", tag="enabled", kw_only=True):
    budget_tokens: Annotated[int, Meta(ge=1024)]


class ThinkingDisabled(msgspec.Struct, tag_field="type", tag="disabled", kw_only=True):
    pass


class ThinkingAdaptive(msgspec.Struct, tag_field="type", tag="adaptive", kw_only=True):
    pass


class ThinkingBetweenTools(msgspec.Struct, tag_field="type", tag="between_tools", kw_only=True):
    pass


Thinking = ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive | ThinkingBetweenTools


# A lone tagged struct does not require its tag when decoded; these name `type` as a field.
class JSONOutputFormat(msgspec.Struct, kw_only=True):
    type: Literal["json_schema"]
    # The schema the answer must follow: a JSON object.
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, kw_only=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JSONOutputFormat | None = None


class Metadata(msgspec.Struct, kw_only=True):
    # An opaque id of the end user (Claude Code sends one per install and session).
    user_id: Annotated[str, Meta(max_length=512)] | None = None


class SystemBlockParam(msgspec.Struct, kw_only=True):
    """A text block of `system`."""

    type: Literal["text"]
    text: str
    cache_control: Any = None
    citations: Any = None


System = str | list[SystemBlockParam]


class Prompt(msgspec.Struct, kw_only=True):
    """What a message and a token count share."""

    model: ModelName
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: System | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(Prompt, kw_only=True):
    """POST /v1/messages, as Anthropic takes it."""

    max_tokens: Annotated[int, Meta(ge=1)]
    metadata: Metadata | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    service_tier: str | None = None


class CountTokensRequest(Prompt, kw_only=True):
    """POST /v1/messages/count_tokens, as Anthropic takes it."""


# -- what it answers ---------------------------------------------------------------------------


class TextBlock(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    # Anthropic signs its thinking so it can be handed back; the gateway's is unsigned.
    signature: str = ""


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextBlock | ThinkingBlock | ToolUseBlock


class AnthropicUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    # The gateway caches no prompts.
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class AnthropicMessage(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    """A whole answer, or (empty, in `message_start`) the message a stream builds."""

    id: str
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: AnthropicUsage


class TextDelta(msgspec.Struct, tag_field="type", tag="text_delta"):
    text: str


class ThinkingDelta(msgspec.Struct, tag_field="type", tag="thinking_delta"):
    thinking: str


class InputJSONDelta(msgspec.Struct, tag_field="type", tag="input_json_delta"):
    partial_json: str


class MessageStart(msgspec.Struct, tag_field="type", tag="message_start"):
    message: AnthropicMessage


class ContentBlockStart(msgspec.Struct, tag_field="type", tag="content_block_start"):
    index: int
    content_block: ContentBlock


class ContentBlockDelta(msgspec.Struct, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDelta | ThinkingDelta | InputJSONDelta


class ContentBlockStop(msgspec.Struct, tag_field="type", tag="content_block_stop"):
    index: int


class MessageDeltaBody(msgspec.Struct, kw_only=True):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class MessageDeltaUsage(msgspec.Struct, kw_only=True):
    # The prompt's count is known only once the upstream has read it: sent here, at the end.
    input_tokens: int
    output_tokens: int


class MessageDelta(msgspec.Struct, tag_field="type", tag="message_delta"):
    delta: MessageDeltaBody
    usage: MessageDeltaUsage


class MessageStop(msgspec.Struct, tag_field="type", tag="message_stop"):
    pass


class Ping(msgspec.Struct, tag_field="type", tag="ping"):
    pass


class TokenCount(msgspec.Struct):
    """The answer of POST /v1/messages/count_tokens."""

    input_tokens: int


# -- the models (GET /v1/models with `anthropic-version`) ----------------------------------------


class ModelsQuery(msgspec.Struct, kw_only=True):
    """GET /v1/models's paging, as Anthropic's: a page of `limit` models after `after_id` or
    before `before_id` (one of them at most)."""

    limit: Annotated[int, Meta(ge=1, le=1000, description="Models on a page, 1 to 1000.")] = 20
    after_id: Annotated[
        str | None, Meta(description="The page after this model (the last page's `last_id`).")
    ] = None
    before_id: Annotated[
        str | None, Meta(description="The page before this model (a page's `first_id`).")
    ] = None


class AnthropicModel(msgspec.Struct, tag_field="type", tag="model", kw_only=True):
    """One model, as Anthropic's ModelInfo (`anthropic.types.ModelInfo`)."""

    id: str
    display_name: str
    # RFC 3339: when the upstream last changed the model, or the Unix epoch if it does not say
    # (Anthropic's own answer for "release date unknown").
    created_at: str
    # Every model the gateway lists is usable; none is deprecated or retired.
    lifecycle: Literal["active"] = "active"
    # The longest context the model takes, where the upstream says it (a model's own page).
    max_input_tokens: int | None = None


class AnthropicModelList(msgspec.Struct, kw_only=True):
    """A page of models, as Anthropic's (the SDK's `SyncPage[ModelInfo]`)."""

    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


class AnthropicErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    message: str


class AnthropicError(msgspec.Struct, tag_field="type", tag="error", kw_only=True):
    """Every error on this front, as Anthropic writes it (HTTP body and SSE `error` event)."""

    error: AnthropicErrorDetail
    request_id: str | None = None
