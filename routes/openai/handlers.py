"""The OpenAI API at /v1/*: chat completions, completions, embeddings and models; the handlers
and their routes. GET /v1/models is shared with Anthropic's API: routes/models.py routes it,
here when the request is an OpenAI client's."""

from __future__ import annotations

import struct
from base64 import b64encode
from datetime import datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from calls.types import ModelName

from ..asking import answer_headers, ask_of, credentials_of, visible_model, visible_models, whole
from ..common import JSON, decode_body, gateway_of
from ..streaming import CallStreamResponse, stream_response
from .errors import bad
from .framing import ChatChunks, TextChunks, chat_completion, text_completion
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    Model,
    ModelList,
)
from .translate import chat_call, completion_call, embedding_call

FRONT = "openai"


async def chat_completions(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, ChatCompletionRequest)
    ask = ask_of(request, FRONT, chat_call(body), stream=bool(body.stream))
    call = await gateway_of(request).call(ask)
    chunk_id = "chatcmpl-" + call.id
    if body.stream:
        return stream_response(request, call, ChatChunks(chunk_id, body.model, body.include_usage))
    finished = await whole(request, call.answer())
    reply = chat_completion(chunk_id, body.model, finished.result)
    return JSON(reply, headers=answer_headers(call))


async def completions(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, CompletionRequest)
    ask = ask_of(request, FRONT, completion_call(body), stream=bool(body.stream))
    call = await gateway_of(request).call(ask)
    chunk_id = "cmpl-" + call.id
    if body.stream:
        return stream_response(request, call, TextChunks(chunk_id, body.model, body.include_usage))
    finished = await whole(request, call.answer())
    reply = text_completion(chunk_id, body.model, finished.result)
    return JSON(reply, headers=answer_headers(call))


def _base64(vector: list[float]) -> str:
    return b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(request: Request) -> Response:
    body = await decode_body(request, EmbeddingRequest)
    call = await gateway_of(request).call(ask_of(request, FRONT, embedding_call(body)))
    result = (await whole(request, call.embeddings())).result
    as_text = body.encoding_format == "base64"
    data = [
        Embedding(embedding=_base64(v) if as_text else v, index=n)
        for n, v in enumerate(result.vectors)
    ]
    tokens = result.input_tokens or 0
    reply = EmbeddingList(data=data, model=body.model, usage=EmbeddingUsage(tokens, tokens))
    return JSON(reply, headers=answer_headers(call))


# -- the models (routed by routes/models.py) ---------------------------------------------------


def _created(when: str | None) -> int:
    """A model's time as a Unix timestamp (0 when unknown)."""
    if when:
        try:
            return max(0, int(datetime.fromisoformat(when).timestamp()))
        except ValueError:
            pass
    return 0


def _owner(name: str) -> str:
    """Who publishes a model, as Ollama's /v1 says: the namespace of `[host/]ns/model:tag`."""
    parts = name.split(":", 1)[0].split("/")
    return parts[-2] if len(parts) > 1 else "library"


async def models(request: Request) -> Response:
    data = [
        Model(id=m.name, created=_created(m.modified_at), owned_by=_owner(m.name))
        for m in await visible_models(request, credentials_of(request))
    ]
    return JSON(ModelList(data=data))


async def model(request: Request) -> Response:
    name = request.path_params["model"]
    try:
        name = msgspec.convert(name, ModelName)
    except msgspec.ValidationError:
        raise bad(f"{name!r} is not a model name", param="model") from None
    shown = await visible_model(request, credentials_of(request), name)
    return JSON(Model(id=name, created=_created(shown.modified_at), owned_by=_owner(name)))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
