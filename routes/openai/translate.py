"""The OpenAI API's bodies as neutral calls.

The translation follows Ollama's own (openai/openai.go), so a client sees what Ollama's /v1
would answer: the same option mapping (temperature and top_p default to 1, as OpenAI's do),
`developer` as `system`, tool-call arguments as JSON strings. Each call reaches the upstream
in its native form (Ollama's chat, not its /v1), so the record keeps its timings.
"""

from __future__ import annotations

from typing import Any

import msgspec

from calls.types import (
    CallRequest,
    Completion,
    EmbedRequest,
    Generation,
    Message,
    ToolCall,
    ToolFunction,
)

from ..common import is_base64
from .errors import bad
from .schemas import (
    THINK,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    TextPart,
    ToolCallIn,
)

_decode_arguments = msgspec.json.Decoder(dict[str, Any]).decode

_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))


def image_of(url: str, where: str) -> str:
    """The base64 of a data: URL, as Ollama takes images."""
    if url.startswith(("http://", "https://")):
        raise bad(
            f"{where}: image URLs are not supported; send the image as a data: URL "
            "(data:image/png;base64,...)",
            param=where,
        )
    data = None
    if url.startswith("data:;base64,"):
        data = url.removeprefix("data:;base64,")
    else:
        for prefix in _IMAGE_PREFIXES:
            if url.startswith(prefix):
                data = url[len(prefix) :]
                break
    if data is None:
        raise bad(
            f"{where}: an image must be a data: URL of a jpeg, png or webp image in base64",
            param=where,
        )
    if not is_base64(data):
        raise bad(f"{where}: the image is not valid base64", param=where)
    return data


def _tool_calls(calls: list[ToolCallIn], where: str) -> list[ToolCall]:
    out = []
    for n, call in enumerate(calls):
        try:
            arguments = _decode_arguments(call.function.arguments or "{}")
        except msgspec.DecodeError:
            place = f"{where}.tool_calls[{n}].function.arguments"
            raise bad(f"{place} is not a JSON object", param=place) from None
        out.append(ToolCall(ToolFunction(call.function.name, arguments), id=call.id))
    return out


def _messages(given: list[ChatMessage]) -> list[Message]:
    names: dict[str, str] = {}
    messages: list[Message] = []
    for n, m in enumerate(given):
        where = f"messages[{n}]"
        role = {"developer": "system", "function": "tool"}.get(m.role, m.role)
        texts: list[str] = []
        images: list[str] = []
        if isinstance(m.content, str):
            texts.append(m.content)
        elif m.content is not None:
            for k, part in enumerate(m.content):
                if isinstance(part, TextPart):
                    texts.append(part.text)
                elif isinstance(part, ImagePart):
                    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                    images.append(image_of(url, f"{where}.content[{k}].image_url"))
                else:
                    texts.append(part.refusal)
        tool_calls = _tool_calls(m.tool_calls, where) if m.tool_calls else None
        for call in tool_calls or ():
            if call.id:
                names[call.id] = call.function.name
        tool_name = None
        if role == "tool":
            tool_name = m.name or names.get(m.tool_call_id or "")
        messages.append(
            Message(
                role,
                "\n".join(texts),
                thinking=m.reasoning,
                images=images or None,
                tool_calls=tool_calls,
                tool_name=tool_name,
                tool_call_id=m.tool_call_id,
            )
        )
    return messages


def think_of(effort: str | None, param: str) -> bool | str | None:
    """A reasoning effort as Ollama's `think` (None: none asked, the upstream's default)."""
    if not effort:
        return None
    if effort not in THINK:
        raise bad(f"{param} {effort!r} is not one of {', '.join(THINK)}", param=param)
    return THINK[effort]


def _check_n(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.n is not None and body.n != 1:
        raise bad(
            f"n={body.n}: the gateway answers one choice per call; ask {body.n} times "
            "instead (omit n, or send n=1)",
            param="n",
        )


def chat_call(body: ChatCompletionRequest) -> CallRequest:
    _check_n(body)
    format_: str | dict[str, Any] | None = None
    rf = body.response_format
    if isinstance(rf, JsonObjectFormat):
        format_ = "json"
    elif isinstance(rf, JsonSchemaFormat):
        format_ = rf.json_schema.schema
    effort = body.reasoning.effort if body.reasoning else body.reasoning_effort
    think = think_of(effort, "reasoning_effort")
    max_tokens = body.max_completion_tokens or body.max_tokens
    generation = Generation(
        options=body.options(max_tokens), format=format_, think=think, tools=body.tools
    )
    return CallRequest(model=body.model, messages=_messages(body.messages), generation=generation)


def completion_call(body: CompletionRequest) -> CallRequest:
    _check_n(body)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return CallRequest(
        model=body.model,
        completion=Completion(prompt=prompt, suffix=body.suffix or None),
        generation=Generation(options=body.options(body.max_tokens)),
    )


def embedding_call(body: EmbeddingRequest) -> EmbedRequest:
    texts = [body.input] if isinstance(body.input, str) else body.input
    return EmbedRequest(model=body.model, input=texts, dimensions=body.dimensions)
