"""Anthropic's Messages bodies as neutral calls.

A conversation of content blocks becomes Ollama's vocabulary, which every upstream kind
translates on (Ollama's chat, or Chat Completions for an OpenAI-compatible server):

- `system` (a string or text blocks) is a first `system` message;
- a user turn's text blocks are one message's text and its image blocks that message's
  images; each `tool_result` block is a `tool` message of its own, naming its tool;
- an assistant turn's `tool_use` blocks are its tool calls, its `thinking` blocks its thinking;
- `max_tokens`, `temperature`, `top_p`, `top_k` and `stop_sequences` are options, `tools`
  Ollama's function tools, `thinking` its `think`, `output_config.format` its `format`.

What has no place on the other side (a thinking budget, `tool_choice` other than `none`,
`is_error`, `output_config.effort`, signatures, cache control) is dropped; docs/fronts.md lists it.
"""

from __future__ import annotations

from typing import Any

from calls.types import CallRequest, Generation, Message, ToolCall, ToolFunction

from ..common import is_base64
from .errors import bad
from .schemas import (
    Base64ImageSource,
    ImageBlockParam,
    MessageParam,
    MessagesRequest,
    Prompt,
    RedactedThinkingBlockParam,
    TextBlockParam,
    ThinkingAdaptive,
    ThinkingBlockParam,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceNone,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)


def _image(block: ImageBlockParam, where: str) -> str:
    """The base64 of an image block, as Ollama takes images."""
    source = block.source
    if not isinstance(source, Base64ImageSource):
        raise bad(
            f"{where}.source: image URLs are not supported; send the image as base64 "
            '({"type": "base64", "media_type": "image/png", "data": "..."})'
        )
    if not is_base64(source.data):
        raise bad(f"{where}.source.data: the image is not valid base64")
    return source.data


def _tool_result(block: ToolResultBlockParam, names: dict[str, str], where: str) -> Message:
    name = names.get(block.tool_use_id)
    if name is None:
        raise bad(
            f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
            f"{block.tool_use_id}. Each `tool_result` block must have a corresponding "
            "`tool_use` block in the previous message."
        )
    texts: list[str] = []
    images: list[str] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    else:
        for k, part in enumerate(block.content or ()):
            if isinstance(part, TextBlockParam):
                texts.append(part.text)
            else:
                images.append(_image(part, f"{where}.content.{k}"))
    return Message(
        "tool",
        "\n".join(texts),
        images=images or None,
        tool_name=name,
        tool_call_id=block.tool_use_id,
    )


def _turn(
    message: MessageParam, previous: dict[str, str], where: str
) -> tuple[list[Message], dict[str, str]]:
    """One turn as neutral messages, and the tool calls it makes (id -> name), which only the
    next turn's tool results may answer."""
    if isinstance(message.content, str):
        return [Message(message.role, message.content)], {}
    out: list[Message] = []
    texts: list[str] = []
    images: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    made: dict[str, str] = {}
    for k, block in enumerate(message.content):
        here = f"{where}.content.{k}"
        if isinstance(block, TextBlockParam):
            texts.append(block.text)
        elif isinstance(block, ImageBlockParam):
            images.append(_image(block, here))
        elif isinstance(block, ToolResultBlockParam):
            if message.role != "user":
                raise bad(f"{here}: `tool_result` blocks belong in a user message")
            out.append(_tool_result(block, previous, here))
        elif isinstance(block, ToolUseBlockParam):
            if message.role != "assistant":
                raise bad(f"{here}: `tool_use` blocks belong in an assistant message")
            calls.append(ToolCall(ToolFunction(block.name, block.input), id=block.id))
            made[block.id] = block.name
        elif isinstance(block, ThinkingBlockParam):
            thinking.append(block.thinking)
        else:
            assert isinstance(block, RedactedThinkingBlockParam)  # encrypted: nothing to pass
    if texts or images or calls or thinking or not out:
        out.append(
            Message(
                message.role,
                "\n".join(texts),
                thinking="\n".join(thinking) or None,
                images=images or None,
                tool_calls=calls or None,
            )
        )
    return out, made


def messages_of(body: Prompt) -> list[Message]:
    """The conversation, `system` first."""
    out: list[Message] = []
    if body.system:
        if isinstance(body.system, str):
            out.append(Message("system", body.system))
        else:
            out.append(Message("system", "\n".join(b.text for b in body.system)))
    made: dict[str, str] = {}
    for n, message in enumerate(body.messages):
        if message.role == "system":
            # Between a tool call and its result too: it answers nothing and calls nothing.
            out.append(_system(message, f"messages.{n}"))
            continue
        turn, made = _turn(message, made, f"messages.{n}")
        out += turn
    return out


def _system(message: MessageParam, where: str) -> Message:
    if isinstance(message.content, str):
        return Message("system", message.content)
    texts = []
    for k, block in enumerate(message.content):
        if not isinstance(block, TextBlockParam):
            raise bad(f"{where}.content.{k}: a system message takes text blocks only")
        texts.append(block.text)
    return Message("system", "\n".join(texts))


def _tools(tools: list[ToolParam] | None) -> list[dict[str, Any]] | None:
    """Ollama's function tools; Anthropic's server tools (web search, ...) cannot run here."""
    out = []
    for n, tool in enumerate(tools or ()):
        if tool.type not in (None, "custom"):
            continue
        if tool.input_schema is None:
            raise bad(f"tools.{n}.input_schema: Field required")
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out or None


def _think(body: Prompt) -> bool | None:
    thinking = body.thinking
    if thinking is None or isinstance(thinking, ThinkingAdaptive):
        return None  # the model decides: the upstream's default
    return not isinstance(thinking, ThinkingDisabled)


def _generation(body: Prompt, options: dict[str, Any]) -> Generation:
    tools = None if isinstance(body.tool_choice, ToolChoiceNone) else _tools(body.tools)
    config = body.output_config
    format_ = config.format.schema if config is not None and config.format is not None else None
    return Generation(options=options, format=format_, think=_think(body), tools=tools)


def message_call(body: MessagesRequest) -> CallRequest:
    """POST /v1/messages as a neutral chat."""
    thinking = body.thinking
    if isinstance(thinking, ThinkingEnabled) and thinking.budget_tokens >= body.max_tokens:
        raise bad("`max_tokens` must be greater than `thinking.budget_tokens`")
    options: dict[str, Any] = {"num_predict": body.max_tokens}
    # Anthropic's default temperature is 1, as OpenAI's (routes/openai sets it the same way).
    options["temperature"] = 1.0 if body.temperature is None else body.temperature
    if body.top_p is not None:
        options["top_p"] = body.top_p
    if body.top_k is not None:
        options["top_k"] = body.top_k
    if body.stop_sequences:
        options["stop"] = body.stop_sequences
    return CallRequest(
        model=body.model, messages=messages_of(body), generation=_generation(body, options)
    )


def count_call(body: Prompt) -> CallRequest:
    """POST /v1/messages/count_tokens as a neutral chat of one token: the upstream reads the
    whole prompt (with the model's own template and tokenizer) and says how long it was."""
    return CallRequest(
        model=body.model,
        messages=messages_of(body),
        generation=_generation(body, {"num_predict": 1, "temperature": 0.0}),
    )
