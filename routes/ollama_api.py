"""Ollama's own API at /api/*: a drop-in address for every client that speaks it.

Bodies are decoded into Ollama's shapes here (these structs are also what /openapi.json
documents), translated into neutral calls, and the answers framed as Ollama frames them:
NDJSON lines while streaming, one object otherwise, durations in nanoseconds, errors as
`{"error": "..."}`. The pipeline knows nothing of this.

Model management (pull, push, create, delete, copy, blobs) is refused: a shared gateway
must not let one client change the models every other client uses.
"""

from __future__ import annotations

import functools
import time
from base64 import b64decode
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from access.identity import check_model
from access.origins import OLLAMA_DEFAULTS
from calls.errors import CallError
from calls.pipeline import Done, Event, Failed, Pieces
from calls.types import (
    CallRequest,
    Completion,
    EmbedRequest,
    Generation,
    Message,
    Metrics,
    ModelInfo,
    ModelName,
    ToolCall,
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

FRONT = "ollama"
PREFIX = "/api/"
# Browser origins this front takes besides --cors-origins: Ollama's own defaults, so that
# editor plugins and local apps written against Ollama work unchanged (access/origins.py).
# `/` answers anything but a browser asking for HTML as Ollama's own does (routes/page.py).
BROWSER_ORIGINS = OLLAMA_DEFAULTS
BROWSER_PATHS = ("/",)
NDJSON = "application/x-ndjson"

_encode = msgspec.json.Encoder().encode

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


class Models(msgspec.Struct):
    """/api/tags and /api/ps: each model as Ollama describes it."""

    models: list[dict[str, Any]]


class VersionReply(msgspec.Struct):
    version: str


class OllamaError(msgspec.Struct):
    """Every error on this front, as Ollama writes it."""

    error: str


# -- errors ------------------------------------------------------------------------------------


def error_response(error: CallError) -> Response:
    """Ollama's error shape and statuses: its handlers answer 400 to any request they cannot
    read, where the gateway's own API says 422 for well-formed JSON of the wrong shape."""
    headers = dict(error.headers)
    if error.request_id:
        headers["X-Request-Id"] = error.request_id
    status = 400 if error.status == 422 else error.status
    return JSON(OllamaError(error.message), status_code=status, headers=headers)


def _bad(message: str) -> CallError:
    return CallError(400, "invalid_request", message)


def _check_images(images: list[str] | None, where: str) -> None:
    for n, image in enumerate(images or ()):
        try:
            b64decode(image, validate=True)
        except ValueError:  # binascii.Error, or text that is not ASCII
            raise _bad(
                f"{where}.images[{n}] is not base64: send each image as base64 text, "
                "without a data: prefix"
            ) from None


# -- time and durations ------------------------------------------------------------------------


class _Clock:
    """RFC 3339 UTC with nanoseconds, as Go writes time.Time, formatted once a second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def now(self) -> str:
        ns = time.time_ns()
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{fraction:09d}Z"


_clock = _Clock()


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1e9)


def _metrics(metrics: Metrics) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": metrics.done_reason,
        "total_duration": _ns(metrics.upstream_seconds),
        "load_duration": _ns(metrics.load_seconds),
        "prompt_eval_count": metrics.input_tokens,
        "prompt_eval_duration": _ns(metrics.prompt_eval_seconds),
        "eval_count": metrics.output_tokens,
        "eval_duration": _ns(metrics.eval_seconds),
    }


# -- the stream framings -----------------------------------------------------------------------

_ERROR_LINE = b'{"error":%s}\n'


class ChatLines:
    """A chat's events as Ollama's NDJSON: a line per piece, then the last line with the
    metrics, or an `{"error": ...}` line. A piece with only thinking or only tool calls is a
    line too."""

    __slots__ = ("model",)

    def __init__(self, model: str) -> None:
        self.model = model

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            model, now = self.model, _clock.now()
            return b"".join(
                _encode(
                    ChatChunk(
                        model,
                        now,
                        OutMessage("assistant", p.content, p.thinking, p.tool_calls),
                        False,
                    )
                )
                + b"\n"
                for p in event.pieces
            )
        if isinstance(event, Done):
            final = ChatReply(
                model=self.model,
                created_at=_clock.now(),
                message=OutMessage("assistant", ""),
                **_metrics(event.metrics),
            )
            return _encode(final) + b"\n"
        if isinstance(event, Failed):
            return _ERROR_LINE % _encode(event.error.message)
        return b""


class GenerateLines:
    """A completion's events as Ollama's NDJSON; the last line carries the context."""

    __slots__ = ("model",)

    def __init__(self, model: str) -> None:
        self.model = model

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            model, now = self.model, _clock.now()
            return b"".join(
                _encode(GenerateChunk(model, now, p.content, False, p.thinking)) + b"\n"
                for p in event.pieces
            )
        if isinstance(event, Done):
            final = GenerateReply(
                model=self.model,
                created_at=_clock.now(),
                response="",
                context=event.metrics.context,
                **_metrics(event.metrics),
            )
            return _encode(final) + b"\n"
        if isinstance(event, Failed):
            return _ERROR_LINE % _encode(event.error.message)
        return b""


# -- asking ------------------------------------------------------------------------------------


def chat_call(body: ChatRequest) -> CallRequest:
    for n, message in enumerate(body.messages):
        if message.images:
            _check_images(message.images, f"messages[{n}]")
    messages = [m.neutral() for m in body.messages]
    return CallRequest(model=body.model, messages=messages, generation=body.generation(body.tools))


def generate_call(body: GenerateRequest) -> CallRequest:
    if not body.prompt and not body.images:
        raise _bad(
            "prompt is empty: the gateway passes on completions, not Ollama's requests to "
            "load or unload a model"
        )
    _check_images(body.images, "$")
    completion = Completion(
        prompt=body.prompt,
        suffix=body.suffix,
        system=body.system,
        template=body.template,
        raw=body.raw,
        context=body.context,
        images=body.images,
    )
    return CallRequest(model=body.model, completion=completion, generation=body.generation())


async def _ask(
    request: Request, call: CallRequest, stream: bool, lines: ChatLines | GenerateLines
) -> Response | CallStreamResponse:
    gateway = gateway_of(request)
    labels = labels_of(request)
    caller = await gateway.admit(credentials(request), call.model, labels, call.prompt_size())
    info = call_info(request, FRONT)
    if stream:
        opening = await gateway.stream(info, call, caller, labels)
        settings = request.app.state.settings
        return CallStreamResponse(
            await opened(request, opening),
            lines,
            media_type=NDJSON,
            keepalive=settings.keepalive,
            send_timeout=settings.send_timeout,
        )
    finished = await until_client_leaves(request, gateway.answer(info, call, caller, labels))
    if finished is None:
        return Response(status_code=499)  # nobody is listening; recorded as cancelled
    answer = finished.answer
    if isinstance(lines, ChatLines):
        message = OutMessage("assistant", answer.content, answer.thinking, answer.tool_calls)
        reply: msgspec.Struct = ChatReply(
            model=call.model,
            created_at=_clock.now(),
            message=message,
            **_metrics(answer.metrics),
        )
    else:
        reply = GenerateReply(
            model=call.model,
            created_at=_clock.now(),
            response=answer.content,
            thinking=answer.thinking,
            context=answer.metrics.context,
            **_metrics(answer.metrics),
        )
    return JSON(reply, headers={"X-Request-Id": finished.record.id})


async def chat(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, ChatRequest)
    return await _ask(request, chat_call(body), body.stream, ChatLines(body.model))


async def generate(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, GenerateRequest)
    return await _ask(request, generate_call(body), body.stream, GenerateLines(body.model))


async def _embed(request: Request, embed: EmbedRequest) -> tuple[list[list[float]], Metrics]:
    gateway = gateway_of(request)
    labels = labels_of(request)
    size = sum(map(len, embed.input))
    caller = await gateway.admit(
        credentials(request), embed.model, labels, size, inputs=len(embed.input)
    )
    work = gateway.embed(call_info(request, FRONT), embed, caller, labels)
    done = await until_client_leaves(request, work)
    if done is None:
        raise CallError(499, "client_gone", "the client closed the connection")
    result, _ = done
    metrics = Metrics(
        input_tokens=result.input_tokens,
        upstream_seconds=result.upstream_seconds,
        load_seconds=result.load_seconds,
    )
    return result.vectors, metrics


async def embed(request: Request) -> Response:
    body = await decode_body(request, EmbedBody)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise _bad("input is empty: give a text, or a list of texts, to embed")
    call = EmbedRequest(
        model=body.model,
        input=texts,
        truncate=body.truncate,
        dimensions=body.dimensions,
        options=body.options,
        keep_alive=body.keep_alive,
    )
    vectors, metrics = await _embed(request, call)
    reply = EmbedReply(
        model=body.model,
        embeddings=vectors,
        total_duration=_ns(metrics.upstream_seconds),
        load_duration=_ns(metrics.load_seconds),
        prompt_eval_count=metrics.input_tokens,
    )
    return JSON(reply)


async def embeddings(request: Request) -> Response:
    body = await decode_body(request, EmbeddingsBody)
    call = EmbedRequest(
        model=body.model, input=[body.prompt], options=body.options, keep_alive=body.keep_alive
    )
    vectors, _ = await _embed(request, call)
    if len(vectors) != 1:
        raise CallError(
            502, "upstream_bad_response", f"the upstream gave {len(vectors)} vectors for one text"
        )
    return JSON(EmbeddingReply(vectors[0]))


# -- the models --------------------------------------------------------------------------------


async def tags(request: Request) -> Response:
    gateway = gateway_of(request)
    caller = await gateway.identify(credentials(request))
    entries = [_tag(model) for model in await gateway.models() if allowed(caller, model.name)]
    return JSON(Models(entries))


def _tag(model: ModelInfo) -> dict[str, Any]:
    """A model as Ollama's /api/tags lists it. An Ollama upstream's own entry goes as it
    came; another kind describes a model in its own terms (an OpenAI model object: id,
    object, owned_by), none of them Ollama's, so its entry is the name clients call it by."""
    if model.details and "name" in model.details:
        return model.details
    return {"name": model.name, "model": model.name}


async def ps(request: Request) -> Response:
    gateway = gateway_of(request)
    caller = await gateway.identify(credentials(request))
    loaded = [m for m in await gateway.loaded() if allowed(caller, str(m.get("name", "")))]
    return JSON(Models(loaded))


async def show(request: Request) -> Response:
    body = await decode_body(request, ShowBody)
    model = body.model or body.name
    if model is None:
        raise _bad("model is required")
    gateway = gateway_of(request)
    check_model(await gateway.identify(credentials(request)), model)
    return JSON(_shown(await gateway.show(model)))


# What an Ollama upstream's /api/show has, and another kind's description of a model has not.
_SHOW_FIELDS = ("model_info", "details", "modelfile")


def _shown(described: dict[str, Any]) -> dict[str, Any]:
    """A model as Ollama's /api/show describes it. An Ollama upstream's answer goes as it
    came; another kind's (an OpenAI model object) has none of Ollama's fields, and the
    `ollama` library refuses an answer without `model_info`: it gets Ollama's fields, empty."""
    if any(field in described for field in _SHOW_FIELDS):
        return described
    return {"modelfile": "", "parameters": "", "template": "", "details": {}, "model_info": {}}


async def version(request: Request) -> Response:
    # Open, like HEAD /: clients probe it before they ask, and /health says as much.
    return JSON(VersionReply(await gateway_of(request).version()))


async def management(request: Request) -> Response:
    """Model management is the operator's, on the Ollama server itself."""
    name = request.url.path.removeprefix(PREFIX).split("/", 1)[0]
    raise CallError(
        403,
        "management_refused",
        f"the gateway does not pass Ollama's model management ({name}) on; "
        "pull, push, create, copy and delete models on the Ollama server itself",
    )


MANAGEMENT = ("pull", "push", "create", "copy")

routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
    *(Route(f"/api/{name}", management, methods=["POST"]) for name in MANAGEMENT),
    Route("/api/delete", management, methods=["DELETE"]),
    Route("/api/blobs/{digest}", management, methods=["HEAD", "POST"]),
]


# -- the document ------------------------------------------------------------------------------


_error = functools.partial(error, shape=OllamaError)


_LIST_ERRORS = {
    401: _error("No valid API key, once keys exist."),
    502: _error("Ollama is unreachable, failed, or answered nonsense."),
    503: _error("Ollama is busy.", retry=True),
    504: _error("Ollama sent nothing for `--timeout` seconds."),
}
_ASK_ERRORS = {
    400: _error(
        "The body is not JSON, has a wrong field (the message names it), an image that is "
        "not base64, a bad model name, or Ollama refused the request."
    ),
    403: _error("This API key may not use this model."),
    404: _error("Ollama has no such model; `ollama pull` it on the server first."),
    413: _error("The body, the prompt, or the number of inputs is too large."),
    429: _error("A rate, token or stream limit is reached.", retry=True),
    499: _error("The client closed the connection before the answer."),
    **_LIST_ERRORS,
}
_LABELS = dict(LABEL_HEADERS)
_STREAMS = (
    "Streamed by default as `application/x-ndjson`, one JSON object a line, the last with "
    '`"done": true` and the metrics; with `"stream": false`, one object. A failure after '
    'the stream began is a last line `{"error": "..."}`. Labels for the accounting come '
    "from the `X-Project`, `X-Process-Id` and `X-Subprocess-Id` headers."
)


def _ask_op(summary: str, body: Any, reply: Any, tag_text: str) -> Operation:
    return Operation(
        summary=summary,
        tag="ollama",
        description=f"{tag_text} {_STREAMS}",
        body=body,
        auth=CALLER,
        headers=_LABELS,
        replies={
            200: Reply(
                description="The answer: NDJSON lines (`ChatChunk`/`GenerateChunk`, then the "
                "final object) when streamed, one final object otherwise.",
                json=reply,
                text=NDJSON,
            ),
            **_ASK_ERRORS,
        },
    )


_MANAGEMENT = Operation(
    summary="Refused: model management is not passed on",
    tag="ollama",
    description="403 with a message saying so: pull, push, create, copy and delete models on "
    "the Ollama server itself.",
    replies={403: _error("The gateway does not pass model management on.")},
)

openapi: Paths = {
    "/api/chat": {
        "POST": _ask_op(
            "Chat (Ollama's API)",
            ChatRequest,
            ChatReply,
            "Ollama's /api/chat: messages with images and tool calls, tools, format (`json` "
            "or a JSON schema), options, keep_alive, think.",
        )
    },
    "/api/generate": {
        "POST": _ask_op(
            "Complete a prompt (Ollama's API)",
            GenerateRequest,
            GenerateReply,
            "Ollama's /api/generate: prompt, system, template, raw, suffix, context, images.",
        )
    },
    "/api/embed": {
        "POST": Operation(
            summary="Embed texts (Ollama's API)",
            tag="ollama",
            description="The record keeps the input token count and the number of inputs, "
            "never the vectors. At most 2,048 inputs a call.",
            body=EmbedBody,
            auth=CALLER,
            headers=_LABELS,
            replies={200: Reply(description="The vectors.", json=EmbedReply), **_ASK_ERRORS},
        )
    },
    "/api/embeddings": {
        "POST": Operation(
            summary="Embed one text (Ollama's older API)",
            tag="ollama",
            description="Asked upstream as /api/embed, whose vectors are normalized.",
            body=EmbeddingsBody,
            auth=CALLER,
            headers=_LABELS,
            replies={200: Reply(description="The vector.", json=EmbeddingReply), **_ASK_ERRORS},
        )
    },
    "/api/tags": {
        "GET": Operation(
            summary="The models Ollama has (that this key may use)",
            tag="ollama",
            auth=CALLER,
            replies={200: Reply(description="Ollama's /api/tags.", json=Models), **_LIST_ERRORS},
        )
    },
    "/api/ps": {
        "GET": Operation(
            summary="The models loaded now (that this key may use)",
            tag="ollama",
            auth=CALLER,
            replies={200: Reply(description="Ollama's /api/ps.", json=Models), **_LIST_ERRORS},
        )
    },
    "/api/show": {
        "POST": Operation(
            summary="What Ollama says of a model",
            tag="ollama",
            body=ShowBody,
            auth=CALLER,
            replies={
                200: Reply(description="Ollama's /api/show.", json=dict[str, Any]),
                400: _ASK_ERRORS[400],
                403: _ASK_ERRORS[403],
                404: _ASK_ERRORS[404],
                **_LIST_ERRORS,
            },
        )
    },
    "/api/version": {
        "GET": Operation(
            summary="Ollama's version",
            tag="ollama",
            description="Open without a key, as /health is.",
            replies={
                200: Reply(description="The upstream Ollama's version.", json=VersionReply),
                502: _LIST_ERRORS[502],
                503: _LIST_ERRORS[503],
                504: _LIST_ERRORS[504],
            },
        )
    },
    **{f"/api/{name}": {"POST": _MANAGEMENT} for name in MANAGEMENT},
    "/api/delete": {"DELETE": _MANAGEMENT},
    "/api/blobs/{digest}": {
        "POST": Operation(
            summary=_MANAGEMENT.summary,
            tag="ollama",
            description=_MANAGEMENT.description,
            path={"digest": "The blob's digest."},
            replies=_MANAGEMENT.replies,
        )
    },
}
