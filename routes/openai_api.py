"""The OpenAI API at /v1/*: chat completions, completions, embeddings and models.

Each body is translated into a neutral call, which reaches Ollama's native chat (not its own
/v1), so the record keeps Ollama's timings: load, prompt evaluation, generation. What the
OpenAI API has no place for (load time, thinking) stays out of the reply and in the record.
The translation follows Ollama's own (openai/openai.go), so a client sees what Ollama's /v1
would answer: the same option mapping (temperature and top_p default to 1, as OpenAI's do),
`developer` as `system`, tool-call arguments as JSON strings.

Bodies are strict, as OpenAI's are: an unknown field is a 400, while every documented field
is accepted, and those Ollama cannot honour (`logit_bias`, `logprobs`, `user`, ...) are ignored.
"""

from __future__ import annotations

import functools
import secrets
import struct
import time
from base64 import b64decode, b64encode
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from access.identity import check_model
from access.origins import OLLAMA_DEFAULTS
from calls.errors import CallError
from calls.pipeline import CallInfo, Done, Event, Failed, Pieces
from calls.types import (
    CallRequest,
    Completion,
    EmbedRequest,
    Generation,
    Message,
    Metrics,
    ModelName,
    ToolCall,
    ToolFunction,
)

from .common import (
    JSON,
    LABEL_HEADERS,
    allowed,
    call_info,
    credentials,
    decode_body,
    gateway_of,
    labels_of,
    opened,
    until_client_leaves,
)
from .openapi import CALLER, Operation, Paths, Reply, error
from .streaming import CallStreamResponse

FRONT = "openai"
PREFIX = "/v1/"
# Browser origins this front takes besides --cors-origins: Ollama's defaults, as Ollama's own
# OpenAI-compatible API does (access/origins.py).
BROWSER_ORIGINS = OLLAMA_DEFAULTS
DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.Encoder().encode
_decode_arguments = msgspec.json.Decoder(dict[str, Any]).decode

# -- what clients send -------------------------------------------------------------------------

# OpenAI's reasoning efforts as Ollama's think levels (Ollama's own mapping).
_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
Effort = Annotated[str, Meta(extra_json_schema={"enum": list(_THINK)})]


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

    def check_n(self) -> None:
        if self.n is not None and self.n != 1:
            raise _bad(
                f"n={self.n}: the gateway answers one choice per call; ask {self.n} times "
                "instead (omit n, or send n=1)",
                param="n",
            )

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


# -- errors ------------------------------------------------------------------------------------

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class _BadParam(CallError):
    """A 400 that names the parameter at fault, as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(400, "invalid_request", message)
        self.param = param


def _bad(message: str, *, param: str | None = None) -> CallError:
    return _BadParam(message, param)


def error_response(error: CallError) -> Response:
    """OpenAI's error shape, with the statuses the `openai` library maps to its exceptions
    (400 BadRequestError for any unreadable request, where the gateway's own API says 422)."""
    status = 400 if error.status == 422 else error.status
    kind = _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    param = getattr(error, "param", None)
    if param is None and "- at `$." in error.message:
        # msgspec's messages end with the path of the field at fault.
        param = error.message.rsplit("- at `$.", 1)[1].rstrip("`")
    headers = dict(error.headers)
    if error.request_id:
        headers["X-Request-Id"] = error.request_id
    body = OpenAIError(
        OpenAIErrorDetail(message=error.message, type=kind, param=param, code=error.code)
    )
    return JSON(body, status_code=status, headers=headers)


# -- translation in ----------------------------------------------------------------------------

_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))


def _image(url: str, where: str) -> str:
    """The base64 of a data: URL, as Ollama takes images."""
    if url.startswith(("http://", "https://")):
        raise _bad(
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
        raise _bad(
            f"{where}: an image must be a data: URL of a jpeg, png or webp image in base64",
            param=where,
        )
    try:
        b64decode(data, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise _bad(f"{where}: the image is not valid base64", param=where) from None
    return data


def _tool_calls(calls: list[ToolCallIn], where: str) -> list[ToolCall]:
    out = []
    for n, call in enumerate(calls):
        try:
            arguments = _decode_arguments(call.function.arguments or "{}")
        except msgspec.DecodeError:
            place = f"{where}.tool_calls[{n}].function.arguments"
            raise _bad(f"{place} is not a JSON object", param=place) from None
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
                    images.append(_image(url, f"{where}.content[{k}].image_url"))
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


def chat_call(body: ChatCompletionRequest) -> CallRequest:
    body.check_n()
    format_: str | dict[str, Any] | None = None
    rf = body.response_format
    if isinstance(rf, JsonObjectFormat):
        format_ = "json"
    elif isinstance(rf, JsonSchemaFormat):
        format_ = rf.json_schema.schema
    effort = body.reasoning.effort if body.reasoning else body.reasoning_effort
    think = None
    if effort:
        if effort not in _THINK:
            raise _bad(
                f"reasoning_effort {effort!r} is not one of {', '.join(_THINK)}",
                param="reasoning_effort",
            )
        think = _THINK[effort]
    max_tokens = body.max_completion_tokens or body.max_tokens
    generation = Generation(
        options=body.options(max_tokens), format=format_, think=think, tools=body.tools
    )
    return CallRequest(model=body.model, messages=_messages(body.messages), generation=generation)


def completion_call(body: CompletionRequest) -> CallRequest:
    body.check_n()
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return CallRequest(
        model=body.model,
        completion=Completion(prompt=prompt, suffix=body.suffix or None),
        generation=Generation(options=body.options(body.max_tokens)),
    )


# -- translation out ---------------------------------------------------------------------------


def _usage(metrics: Metrics) -> OpenAIUsage:
    prompt, completion = metrics.input_tokens or 0, metrics.output_tokens or 0
    return OpenAIUsage(prompt, completion, prompt + completion)


def _finish(metrics: Metrics, tools_called: bool) -> str:
    reason = metrics.done_reason or "stop"
    if reason == "stop" and tools_called:
        return "tool_calls"
    return reason if reason in ("stop", "length") else "stop"


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _tool_call_out(call: ToolCall, index: int | msgspec.UnsetType) -> ToolCallOut:
    function = ToolCallFunctionOut(call.function.name, _encode(call.function.arguments).decode())
    return ToolCallOut(id=call.id or _call_id(), function=function, index=index)


class ChatChunks:
    """A chat's events as OpenAI's SSE chunks: the role with the first, a chunk per piece that
    has text or tool calls (thinking has no place here), a last chunk with the finish reason,
    and the usage in a chunk of its own when the client asked for it. `data: [DONE]` follows
    (the response's tail)."""

    __slots__ = (
        "chunk_id",
        "created",
        "head",
        "include_usage",
        "model",
        "role_sent",
        "tools_called",
    )

    def __init__(self, chunk_id: str, model: str, include_usage: bool) -> None:
        self.chunk_id = chunk_id
        self.model = model
        self.created = int(time.time())
        # Every chunk starts the same way: encoded once.
        self.head = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,' % (
            _encode(chunk_id),
            self.created,
            _encode(model),
        )
        self.include_usage = include_usage
        self.role_sent = False
        self.tools_called = 0

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return b'%s"system_fingerprint":"fp_ollama","choices":[%s]}\n\n' % (
            self.head,
            _encode(choice),
        )

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            out = []
            for piece in event.pieces:
                if not piece.content and not piece.tool_calls:
                    continue
                calls = None
                if piece.tool_calls:
                    calls = []
                    for call in piece.tool_calls:
                        calls.append(_tool_call_out(call, self.tools_called))
                        self.tools_called += 1
                role = None if self.role_sent else "assistant"
                self.role_sent = True
                out.append(self._chunk(Delta(role=role, content=piece.content, tool_calls=calls)))
            return b"".join(out)
        if isinstance(event, Done):
            last = self._chunk(Delta(), _finish(event.metrics, self.tools_called > 0))
            if self.include_usage:
                usage = ChatCompletionChunk(
                    id=self.chunk_id,
                    created=self.created,
                    model=self.model,
                    choices=[],
                    usage=_usage(event.metrics),
                )
                last += b"data: %s\n\n" % _encode(usage)
            return last
        if isinstance(event, Failed):
            return b"data: %s\n\n" % _encode(_stream_error(event.error))
        return b""


class TextChunks:
    """A completion's events as OpenAI's SSE chunks."""

    __slots__ = ("base", "include_usage")

    def __init__(self, chunk_id: str, model: str, include_usage: bool) -> None:
        self.base = TextCompletion(id=chunk_id, created=int(time.time()), model=model, choices=[])
        self.include_usage = include_usage

    def _data(self, choices: list[TextChoice], usage: OpenAIUsage | None = None) -> bytes:
        chunk = msgspec.structs.replace(self.base, choices=choices, usage=usage)
        return b"data: %s\n\n" % _encode(chunk)

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            return b"".join(
                self._data([TextChoice(text=p.content)]) for p in event.pieces if p.content
            )
        if isinstance(event, Done):
            last = self._data([TextChoice(text="", finish_reason=_finish(event.metrics, False))])
            if self.include_usage:
                last += self._data([], _usage(event.metrics))
            return last
        if isinstance(event, Failed):
            return b"data: %s\n\n" % _encode(_stream_error(event.error))
        return b""


def _stream_error(error: CallError) -> OpenAIError:
    status = error.status
    kind = _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return OpenAIError(OpenAIErrorDetail(message=error.message, type=kind, code=error.code))


# -- asking ------------------------------------------------------------------------------------


async def _ask(
    request: Request,
    info: CallInfo,
    call: CallRequest,
    stream: bool,
    chunks: ChatChunks | TextChunks,
) -> Any:
    gateway = gateway_of(request)
    labels = labels_of(request)
    caller = await gateway.admit(credentials(request), call.model, labels, call.prompt_size())
    if stream:
        opening = await gateway.stream(info, call, caller, labels)
        settings = request.app.state.settings
        return CallStreamResponse(
            await opened(request, opening),
            chunks,
            media_type="text/event-stream; charset=utf-8",
            headers=[("Cache-Control", "no-cache, no-transform"), ("X-Accel-Buffering", "no")],
            ping=b": keep-alive\n\n",
            keepalive=settings.keepalive,
            send_timeout=settings.send_timeout,
            tail=DONE,
        )
    return await until_client_leaves(request, gateway.answer(info, call, caller, labels))


async def chat_completions(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, ChatCompletionRequest)
    call = chat_call(body)
    info = call_info(request, FRONT)
    chunk_id = "chatcmpl-" + info.id
    chunks = ChatChunks(chunk_id, body.model, body.include_usage)
    result = await _ask(request, info, call, bool(body.stream), chunks)
    if isinstance(result, CallStreamResponse):
        return result
    if result is None:
        return Response(status_code=499)  # nobody is listening; recorded as cancelled
    answer = result.answer
    calls = [_tool_call_out(c, msgspec.UNSET) for c in answer.tool_calls or ()]
    message = AssistantMessage(
        content=answer.content if answer.content or not calls else None,
        tool_calls=calls or msgspec.UNSET,
    )
    reply = ChatCompletion(
        id=chunk_id,
        created=int(time.time()),
        model=body.model,
        choices=[Choice(message=message, finish_reason=_finish(answer.metrics, bool(calls)))],
        usage=_usage(answer.metrics),
    )
    return JSON(reply, headers={"X-Request-Id": result.record.id})


async def completions(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, CompletionRequest)
    call = completion_call(body)
    info = call_info(request, FRONT)
    chunk_id = "cmpl-" + info.id
    chunks = TextChunks(chunk_id, body.model, body.include_usage)
    result = await _ask(request, info, call, bool(body.stream), chunks)
    if isinstance(result, CallStreamResponse):
        return result
    if result is None:
        return Response(status_code=499)
    answer = result.answer
    reply = TextCompletion(
        id=chunk_id,
        created=int(time.time()),
        model=body.model,
        choices=[TextChoice(text=answer.content, finish_reason=_finish(answer.metrics, False))],
        usage=_usage(answer.metrics),
    )
    return JSON(reply, headers={"X-Request-Id": result.record.id})


def _base64(vector: list[float]) -> str:
    return b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(request: Request) -> Response:
    body = await decode_body(request, EmbeddingRequest)
    texts = [body.input] if isinstance(body.input, str) else body.input
    call = EmbedRequest(model=body.model, input=texts, dimensions=body.dimensions)
    gateway = gateway_of(request)
    labels = labels_of(request)
    caller = await gateway.admit(
        credentials(request), body.model, labels, sum(map(len, texts)), inputs=len(texts)
    )
    work = gateway.embed(call_info(request, FRONT), call, caller, labels)
    done = await until_client_leaves(request, work)
    if done is None:
        return Response(status_code=499)
    result, record = done
    as_text = body.encoding_format == "base64"
    data = [
        Embedding(embedding=_base64(v) if as_text else v, index=n)
        for n, v in enumerate(result.vectors)
    ]
    tokens = result.input_tokens or 0
    reply = EmbeddingList(data=data, model=body.model, usage=EmbeddingUsage(tokens, tokens))
    return JSON(reply, headers={"X-Request-Id": record.id})


# -- the models --------------------------------------------------------------------------------


def _created(described: dict[str, Any] | None) -> int:
    when = (described or {}).get("modified_at")
    if isinstance(when, str):
        try:
            return int(datetime.fromisoformat(when).timestamp())
        except ValueError:
            pass
    return 0


def _owner(name: str) -> str:
    """Who publishes a model, as Ollama's /v1 says: the namespace of `[host/]ns/model:tag`."""
    parts = name.split(":", 1)[0].split("/")
    return parts[-2] if len(parts) > 1 else "library"


async def models(request: Request) -> Response:
    gateway = gateway_of(request)
    caller = await gateway.identify(credentials(request))
    data = [
        Model(id=m.name, created=_created(m.details), owned_by=_owner(m.name))
        for m in await gateway.models()
        if allowed(caller, m.name)
    ]
    return JSON(ModelList(data=data))


async def model(request: Request) -> Response:
    name = request.path_params["model"]
    try:
        name = msgspec.convert(name, ModelName)
    except msgspec.ValidationError:
        raise _bad(f"{name!r} is not a model name", param="model") from None
    gateway = gateway_of(request)
    check_model(await gateway.identify(credentials(request)), name)
    shown = await gateway.show(name)
    return JSON(Model(id=name, created=_created(shown), owned_by=_owner(name)))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model:path}", model, methods=["GET"]),
]


# -- the document ------------------------------------------------------------------------------


_error = functools.partial(error, shape=OpenAIError)


_LIST_ERRORS = {
    401: _error("No valid API key, once keys exist (`AuthenticationError`)."),
    502: _error("Ollama is unreachable, failed, or answered nonsense."),
    503: _error("Ollama is busy.", retry=True),
    504: _error("Ollama sent nothing for `--timeout` seconds."),
}
_ASK_ERRORS = {
    400: _error(
        "The body is not JSON, has a wrong or unknown field (`param` names it), `n` other "
        "than 1, an image that is not a base64 data: URL, or a bad model name "
        "(`BadRequestError`)."
    ),
    403: _error("This API key may not use this model (`PermissionDeniedError`)."),
    404: _error("Ollama has no such model (`NotFoundError`)."),
    413: _error("The body, the prompt, or the number of inputs is too large."),
    429: _error("A rate, token or stream limit is reached (`RateLimitError`).", retry=True),
    499: _error("The client closed the connection before the answer."),
    **_LIST_ERRORS,
}
_STREAMED = (
    "With `stream: true`, Server-Sent Events: one `data:` chunk per piece of the answer, a "
    "last chunk with `finish_reason`, a usage chunk when `stream_options.include_usage` is "
    "set, then `data: [DONE]`. Labels for the accounting come from the `X-Project`, "
    "`X-Process-Id` and `X-Subprocess-Id` headers."
)

openapi: Paths = {
    "/v1/chat/completions": {
        "POST": Operation(
            summary="Chat completion (OpenAI's API)",
            tag="openai",
            description="Asked of Ollama's native chat, so the record keeps its timings. "
            + _STREAMED,
            body=ChatCompletionRequest,
            auth=CALLER,
            headers=dict(LABEL_HEADERS),
            replies={
                200: Reply(
                    description="The completion, or its chunks as Server-Sent Events.",
                    json=ChatCompletion,
                    events={"": (ChatCompletionChunk, OpenAIError)},
                    last_data="[DONE]",
                ),
                **_ASK_ERRORS,
            },
        )
    },
    "/v1/completions": {
        "POST": Operation(
            summary="Text completion (OpenAI's legacy API)",
            tag="openai",
            description="Asked of Ollama's native generate. " + _STREAMED,
            body=CompletionRequest,
            auth=CALLER,
            headers=dict(LABEL_HEADERS),
            replies={
                200: Reply(
                    description="The completion, or its chunks as Server-Sent Events.",
                    json=TextCompletion,
                    events={"": (TextCompletion, OpenAIError)},
                    last_data="[DONE]",
                ),
                **_ASK_ERRORS,
            },
        )
    },
    "/v1/embeddings": {
        "POST": Operation(
            summary="Embeddings (OpenAI's API)",
            tag="openai",
            description="The record keeps the input token count and the number of inputs, "
            "never the vectors. At most 2,048 inputs a call.",
            body=EmbeddingRequest,
            auth=CALLER,
            headers=dict(LABEL_HEADERS),
            replies={200: Reply(description="The vectors.", json=EmbeddingList), **_ASK_ERRORS},
        )
    },
    "/v1/models": {
        "GET": Operation(
            summary="The models (that this key may use)",
            tag="openai",
            auth=CALLER,
            replies={200: Reply(description="The models.", json=ModelList), **_LIST_ERRORS},
        )
    },
    "/v1/models/{model}": {
        "GET": Operation(
            summary="One model",
            tag="openai",
            path={"model": "The model's name, as `ollama list` shows it."},
            auth=CALLER,
            replies={
                200: Reply(description="The model.", json=Model),
                400: _ASK_ERRORS[400],
                403: _ASK_ERRORS[403],
                404: _ASK_ERRORS[404],
                **_LIST_ERRORS,
            },
        )
    },
}
