"""Ollama's API at /api/*: the handlers and their routes.

Model management (pull, push, create, delete, copy, blobs) is refused: a shared gateway
must not let one client change the models every other client uses.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from access.identity import check_model
from calls.errors import CallError

from ..asking import allowed, answer_headers, ask_of, credentials_of, whole
from ..common import JSON, decode_body, gateway_of
from ..streaming import CallStreamResponse, stream_response
from .errors import PREFIX, bad
from .framing import ChatLines, GenerateLines, chat_reply, embed_metrics, generate_reply
from .models import listed, running, shown
from .schemas import (
    ChatRequest,
    EmbedBody,
    EmbeddingReply,
    EmbeddingsBody,
    EmbedReply,
    GenerateRequest,
    Models,
    Running,
    ShowBody,
    VersionReply,
)
from .translate import chat_call, embed_call, embeddings_call, generate_call

FRONT = "ollama"


async def chat(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, ChatRequest)
    ask = ask_of(request, FRONT, chat_call(body), stream=body.stream)
    call = await gateway_of(request).call(ask)
    if body.stream:
        return stream_response(request, call, ChatLines(body.model))
    finished = await whole(request, call.answer())
    reply = chat_reply(body.model, finished.result, finished.record)
    return JSON(reply, headers=answer_headers(call))


async def generate(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, GenerateRequest)
    ask = ask_of(request, FRONT, generate_call(body), stream=body.stream)
    call = await gateway_of(request).call(ask)
    if body.stream:
        return stream_response(request, call, GenerateLines(body.model, body.raw))
    finished = await whole(request, call.answer())
    reply = generate_reply(body.model, finished.result, finished.record, body.raw)
    return JSON(reply, headers=answer_headers(call))


async def embed(request: Request) -> Response:
    body = await decode_body(request, EmbedBody)
    call = await gateway_of(request).call(ask_of(request, FRONT, embed_call(body)))
    finished = await whole(request, call.embeddings())
    reply = EmbedReply(
        model=body.model,
        embeddings=finished.result.vectors,
        **embed_metrics(finished.result, finished.record),
    )
    return JSON(reply, headers=answer_headers(call))


async def embeddings(request: Request) -> Response:
    body = await decode_body(request, EmbeddingsBody)
    call = await gateway_of(request).call(ask_of(request, FRONT, embeddings_call(body)))
    vectors = (await whole(request, call.embeddings())).result.vectors
    if len(vectors) != 1:
        raise CallError(
            502, "upstream_bad_response", f"the upstream gave {len(vectors)} vectors for one text"
        )
    return JSON(EmbeddingReply(vectors[0]))


# -- the models --------------------------------------------------------------------------------


async def tags(request: Request) -> Response:
    gateway = gateway_of(request)
    caller = await gateway.identify(credentials_of(request))
    entries = [listed(model) for model in await gateway.models() if allowed(caller, model.name)]
    return JSON(Models(entries))


async def ps(request: Request) -> Response:
    gateway = gateway_of(request)
    caller = await gateway.identify(credentials_of(request))
    entries = [running(m) for m in await gateway.loaded() if allowed(caller, m.name)]
    return JSON(Running(entries))


async def show(request: Request) -> Response:
    body = await decode_body(request, ShowBody)
    model = body.model or body.name
    if model is None:
        raise bad("model is required")
    gateway = gateway_of(request)
    check_model(await gateway.identify(credentials_of(request)), model)
    return JSON(shown(await gateway.show(model)))


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
