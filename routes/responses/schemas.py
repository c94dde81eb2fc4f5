"""OpenAI's Responses API shapes, as msgspec structs: what its clients send and what it answers.

The body is strict, as OpenAI's is: an unknown top-level field is a 400, every documented one
is accepted, and those the gateway cannot honour (`include`, `metadata`, `service_tier`, ...)
are ignored. Input items and their content parts are one struct each with every field any
kind has, so a kind the gateway does not take (`item_reference`, `input_file`, ...) is named in
a 400 whose `param` points at it (translate.py), rather than lost in a union's message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from calls.types import ModelName

from ..openai.schemas import Effort, Temperature, Tokens, TopP

# -- what clients send -------------------------------------------------------------------------


class ContentPart(msgspec.Struct, kw_only=True):
    """One part of a message's content: `input_text`, `output_text`, `input_image`
    (a base64 data: URL) or `refusal`."""

    type: str
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None
    file_id: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class Item(msgspec.Struct, kw_only=True):
    """One input item: a `message` (the type may be left out, as clients do), a
    `function_call` the model made, a `function_call_output` answering one, or a `reasoning`
    item from an earlier answer."""

    type: str = "message"
    id: str | None = None
    status: str | None = None
    # message
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    # function_call and function_call_output
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None
    # reasoning
    summary: list[ContentPart] | None = None
    encrypted_content: str | None = None


class FunctionTool(msgspec.Struct, kw_only=True):
    """A tool: only `function` ones (the upstream runs no tools of its own)."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseTextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`text`, `json_object`, or `json_schema` with the schema the answer must follow."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextOptions(msgspec.Struct, kw_only=True):
    format: ResponseTextFormat | None = None
    verbosity: str | None = None


class ReasoningOptions(msgspec.Struct, kw_only=True):
    effort: Effort | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponseStreamOptions(msgspec.Struct, kw_only=True):
    include_obfuscation: bool | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/responses, as OpenAI takes it; stateless (no `previous_response_id`, no
    `store: true`)."""

    model: ModelName
    input: str | list[Item] = ""
    instructions: str | None = None
    stream: bool | None = None
    stream_options: ResponseStreamOptions | None = None
    max_output_tokens: Tokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = None
    reasoning: ReasoningOptions | None = None
    text: TextOptions | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    prompt: Any = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    truncation: str | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    # Newer fields of the `openai` library's Responses API, and Codex's own
    # `client_metadata`: accepted, and ignored.
    context_management: Any = None
    moderation: Any = None
    prompt_cache_options: Any = None
    background_options: Any = None
    access_programs: Any = None
    image: Any = None
    client_metadata: dict[str, Any] | None = None
    # Ollama's extension, as on its own /v1/responses.
    seed: int | None = None


# -- what it answers ---------------------------------------------------------------------------


class OutputText(msgspec.Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class ReasoningText(msgspec.Struct, tag_field="type", tag="reasoning_text"):
    text: str


class MessageOut(msgspec.Struct, kw_only=True, tag_field="type", tag="message"):
    id: str
    status: str
    role: str = "assistant"
    content: list[OutputText]


class FunctionCallOut(msgspec.Struct, kw_only=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


class ReasoningOut(msgspec.Struct, kw_only=True, tag_field="type", tag="reasoning"):
    id: str
    summary: list[Any] = msgspec.field(default_factory=list)
    content: list[ReasoningText] = msgspec.field(default_factory=list)
    status: str = "completed"


OutputItem = MessageOut | FunctionCallOut | ReasoningOut


class InputTokensDetails(msgspec.Struct, frozen=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(msgspec.Struct):
    reason: str


class ResponseError(msgspec.Struct):
    code: str
    message: str


class ToolOut(msgspec.Struct, kw_only=True, tag_field="type", tag="function"):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextOut(msgspec.Struct, kw_only=True):
    format: ResponseTextFormat


class Response(msgspec.Struct, kw_only=True):
    """A response: the whole answer, and the object the stream's lifecycle events carry."""

    id: str
    object: str = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "incomplete"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    reasoning: ReasoningOptions | None = None
    store: bool = False
    temperature: float | None = None
    text: TextOut
    tool_choice: Any = "auto"
    tools: list[ToolOut]
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


# The stream's events: each a `data:` JSON object under an `event:` line of its own type.


class ResponseEvent(msgspec.Struct, kw_only=True):
    type: str
    sequence_number: int


class ResponseLifecycle(ResponseEvent, kw_only=True):
    """`response.created`, `.in_progress`, `.completed`, `.incomplete`, `.failed`."""

    response: Response


class OutputItemEvent(ResponseEvent, kw_only=True):
    """`response.output_item.added` and `.done`."""

    output_index: int
    item: OutputItem


class ContentPartEvent(ResponseEvent, kw_only=True):
    """`response.content_part.added` and `.done`."""

    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class TextDelta(ResponseEvent, kw_only=True):
    """`response.output_text.delta` and `response.reasoning_text.delta`."""

    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class TextDone(ResponseEvent, kw_only=True):
    """`response.output_text.done` and `response.reasoning_text.done`."""

    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class ArgumentsDelta(ResponseEvent, kw_only=True):
    """`response.function_call_arguments.delta`."""

    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(ResponseEvent, kw_only=True):
    """`response.function_call_arguments.done`."""

    item_id: str
    output_index: int
    name: str
    arguments: str
