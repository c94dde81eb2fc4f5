"""A Responses body as a neutral chat call.

Stateless, as Ollama's own /v1/responses: `instructions` becomes the first system message,
`input` (a string, or items) the conversation. A `function_call` item joins the assistant
message before it as a tool call, a `function_call_output` becomes a `tool` message naming the
function it answers, and a `reasoning` item's text becomes the thinking of the assistant
message after it. Options as the OpenAI front maps them (temperature and top_p default to 1).
"""

from __future__ import annotations

from typing import Any

import msgspec

from calls.types import CallRequest, Generation, Message, ToolCall, ToolFunction

from ..openai.translate import image_of, think_of
from .errors import bad, stateless
from .schemas import ContentPart, FunctionTool, Item, ResponsesRequest

_decode_arguments = msgspec.json.Decoder(dict[str, Any]).decode

_ROLES = {"developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def _content(parts: str | list[ContentPart] | None, where: str) -> tuple[str, list[str]]:
    """A message's text and images (base64)."""
    if parts is None:
        return "", []
    if isinstance(parts, str):
        return parts, []
    texts: list[str] = []
    images: list[str] = []
    for n, part in enumerate(parts):
        if part.type in _TEXT_PARTS:
            texts.append(part.text or "")
        elif part.type == "refusal":
            texts.append(part.refusal or "")
        elif part.type == "input_image":
            if part.image_url is None:
                place = f"{where}[{n}].image_url"
                raise bad(
                    f"{place}: send the image as a data: URL (files are not supported)",
                    param=place,
                )
            images.append(image_of(part.image_url, f"{where}[{n}].image_url"))
        else:
            place = f"{where}[{n}].type"
            raise bad(
                f"{place}: content of type {part.type!r} is not supported; send input_text, "
                "output_text or input_image parts",
                param=place,
            )
    return "\n".join(texts), images


def _tool_call(item: Item, where: str) -> ToolCall:
    if not item.name:
        raise bad(f"{where}.name: a function_call needs the function's name", param=f"{where}.name")
    try:
        arguments = _decode_arguments(item.arguments or "{}")
    except msgspec.DecodeError:
        raise bad(f"{where}.arguments is not a JSON object", param=f"{where}.arguments") from None
    return ToolCall(ToolFunction(item.name, arguments), id=item.call_id or item.id)


def _messages(body: ResponsesRequest) -> list[Message]:
    messages: list[Message] = []
    if body.instructions:
        messages.append(Message("system", body.instructions))
    if isinstance(body.input, str):
        messages.append(Message("user", body.input))
        return messages
    names: dict[str, str] = {}
    thinking: list[str] = []
    for n, item in enumerate(body.input):
        where = f"input[{n}]"
        if item.type == "message":
            if item.role is None:
                raise bad(f"{where}.role: a message needs a role", param=f"{where}.role")
            text, images = _content(item.content, f"{where}.content")
            message = Message(_ROLES.get(item.role, item.role), text, images=images or None)
            if item.role == "assistant" and thinking:
                message.thinking, thinking = "".join(thinking), []
            messages.append(message)
        elif item.type == "function_call":
            call = _tool_call(item, where)
            if call.id:
                names[call.id] = call.function.name
            last = messages[-1] if messages else None
            if last is None or last.role != "assistant":
                last = Message("assistant", "")
                messages.append(last)
            if thinking:
                last.thinking, thinking = (last.thinking or "") + "".join(thinking), []
            last.tool_calls = [*(last.tool_calls or ()), call]
        elif item.type == "function_call_output":
            text, images = _content(item.output, f"{where}.output")
            call_id = item.call_id or ""
            messages.append(
                Message(
                    "tool",
                    text,
                    images=images or None,
                    tool_name=names.get(call_id),
                    tool_call_id=item.call_id,
                )
            )
        elif item.type == "reasoning":
            # The text of an earlier answer's thinking, if it came with any (an encrypted
            # one is OpenAI's own, and means nothing to another model).
            for part in (item.content or []) if isinstance(item.content, list) else []:
                thinking.append(part.text or "")
        elif item.type == "item_reference":
            raise stateless(f"{where}: an item_reference names a stored item", f"{where}.type")
        else:
            raise bad(
                f"{where}.type: items of type {item.type!r} are not supported; send message, "
                "function_call, function_call_output or reasoning items",
                param=f"{where}.type",
            )
    return messages


def _tools(tools: list[FunctionTool]) -> list[dict[str, Any]]:
    """Function tools, as the neutral call (and Ollama) take them."""
    out = []
    for n, tool in enumerate(tools):
        if tool.type != "function":
            raise bad(
                f"tools[{n}].type: tools of type {tool.type!r} are not supported; the "
                "gateway takes tools of type function",
                param=f"tools[{n}].type",
            )
        if not tool.name:
            raise bad(f"tools[{n}].name: a function tool needs a name", param=f"tools[{n}].name")
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def _refuse_state(body: ResponsesRequest) -> None:
    if body.previous_response_id is not None:
        raise stateless(
            "previous_response_id names a stored response", param="previous_response_id"
        )
    if body.store:
        raise stateless("store: true asks to keep the response", param="store")
    if body.conversation is not None:
        raise stateless("conversation names a stored conversation", param="conversation")
    if body.background:
        raise stateless("background: true needs a stored response to poll", param="background")
    if body.prompt is not None:
        raise bad("prompt: stored prompt templates are not supported", param="prompt")


def response_call(body: ResponsesRequest) -> CallRequest:
    _refuse_state(body)
    format_: str | dict[str, Any] | None = None
    text_format = body.text.format if body.text else None
    if text_format is not None and text_format.type == "json_object":
        format_ = "json"
    elif text_format is not None and text_format.type == "json_schema":
        if text_format.schema is None:
            raise bad(
                "text.format.schema: a json_schema format needs its schema",
                param="text.format.schema",
            )
        format_ = text_format.schema
    think = think_of(body.reasoning.effort if body.reasoning else None, "reasoning.effort")
    options: dict[str, Any] = {}
    if body.max_output_tokens is not None:
        options["num_predict"] = body.max_output_tokens
    options["temperature"] = 1.0 if body.temperature is None else body.temperature
    if body.seed is not None:
        options["seed"] = body.seed
    options["top_p"] = 1.0 if body.top_p is None else body.top_p
    generation = Generation(
        options=options,
        format=format_,
        think=think,
        # tool_choice "none": no tools offered (the upstream cannot be told to leave them).
        tools=_tools(body.tools) if body.tools and body.tool_choice != "none" else None,
    )
    return CallRequest(model=body.model, messages=_messages(body), generation=generation)
