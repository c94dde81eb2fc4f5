"""The seed's API, /api/v1/ai: the models list, the two ways to ask, and stream tickets.

The seed's `agent`/`content`/`template` body is translated here into a neutral call, and the
call's events are framed here as the seed's Server-Sent Events; the pipeline knows neither.
"""

from __future__ import annotations

import contextlib

import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from access import identity
from access.tickets import TICKET_SECONDS
from calls.pipeline import Done, Event, Failed, Pieces, Started
from calls.types import CallRequest, Generation, Labels, Message

from .common import (
    JSON,
    call_info,
    credentials,
    decode_body,
    decode_query,
    error_body,
    gateway_of,
    until_client_leaves,
)
from .common import error_response as error_response
from .openapi import CALLER, UNAUTHORIZED, Operation, Paths, Reply, error
from .schemas import AskReply, AskRequest, ErrorBody, StartEvent, Ticket, TokenEvent, Usage
from .streaming import CallStreamResponse

FRONT = "seed"
# Everything under /api/v1/ (this API and the admin API) answers errors in the gateway's own
# shape, though Ollama's front claims the rest of /api/.
PREFIX = "/api/v1/"
_encode = msgspec.json.Encoder().encode


def call_of(req: AskRequest) -> tuple[CallRequest, Labels]:
    """The seed's body as a neutral call: the template as the system prompt, the content as
    the user's message, and the generation fields beyond the seed's as they came."""
    messages = [Message("system", req.template)] if req.template else []
    messages.append(Message("user", req.content))
    labels = Labels(project=req.project, process_id=req.process_id, subprocess_id=req.subprocess_id)
    generation = Generation(
        options=req.options, format=req.format, think=req.think, keep_alive=req.keep_alive
    )
    return CallRequest(model=req.agent, messages=messages, generation=generation), labels


async def models(request: Request) -> Response:
    return JSON([model.name for model in await gateway_of(request).models()])


def wants_json(accept: str | None) -> bool:
    """True when the client prefers application/json to text/plain (the seed's default)."""
    if not accept:
        return False
    best = {"text/plain": 0.0, "application/json": 0.0}
    for position, item in enumerate(accept.split(",")):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        # An earlier entry wins a tie, by a hair.
        quality -= position * 1e-6
        for candidate in best:
            if media == candidate or (media == "application/*" and candidate == "application/json"):
                best[candidate] = max(best[candidate], quality)
    return best["application/json"] > max(best["text/plain"], 0.0)


async def ask_sync(request: Request) -> Response:
    req = await decode_body(request, AskRequest)
    call, labels = call_of(req)
    gateway = gateway_of(request)
    caller = await gateway.admit(
        credentials(request, user_key=req.user_key), req.agent, labels, call.prompt_size()
    )
    info = call_info(request, FRONT)
    finished = await until_client_leaves(request, gateway.answer(info, call, caller, labels))
    if finished is None:
        # Nobody is listening; the call is recorded as cancelled.
        return Response(status_code=499)
    record = finished.record
    headers = {"X-Request-Id": record.id}
    if wants_json(request.headers.get("accept")):
        reply = AskReply(
            id=record.id,
            model=req.agent,
            output=record.output,
            thinking=finished.answer.thinking or None,
            usage=Usage.of(record),
        )
        return JSON(reply, headers=headers)
    return PlainTextResponse(finished.answer.content, headers=headers)


# -- the seed's event stream -----------------------------------------------------------------


def _event(name: bytes, seq: int, data: msgspec.Struct) -> bytes:
    # msgspec escapes every newline inside JSON strings, so one `data:` line always suffices.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name, _encode(data))


class SeedEvents:
    """Frames one call's events as the seed's SSE: `start`, a `token` per chunk, then
    `done` or `error`; every event numbered from 0."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            # Every token that one read brought goes out in one write: when the gateway
            # falls behind, it catches up in fewer, larger sends.
            seq = self.seq
            out = []
            for piece in event.pieces:
                if piece.content or piece.thinking:
                    seq += 1
                    out.append(_event(b"token", seq, TokenEvent(piece.content, piece.thinking)))
            self.seq = seq
            return out[0] if len(out) == 1 else b"".join(out)
        if isinstance(event, Started):
            return _event(b"start", 0, StartEvent(event.id, event.model))
        self.seq += 1
        if isinstance(event, Done):
            return _event(b"done", self.seq, Usage.of(event.record))
        assert isinstance(event, Failed)
        return _event(b"error", self.seq, error_body(event.error))


class StreamQuery(AskRequest, kw_only=True):
    """The GET stream's query: the ask's fields, and a ticket in place of a header."""

    ticket: str | None = None


async def ask_async(request: Request) -> Response | CallStreamResponse:
    req: AskRequest
    ticket = None
    if request.method == "GET":
        query = decode_query(request, StreamQuery)
        if "last-event-id" in request.headers:
            # An EventSource reconnecting after its stream ended. An answer cannot be
            # resumed, and 204 is what tells a browser to stop reconnecting.
            return Response(status_code=204)
        req, ticket = query, query.ticket
    else:
        req = await decode_body(request, AskRequest)
    call, labels = call_of(req)
    gateway = gateway_of(request)
    caller = await gateway.admit(
        credentials(request, ticket=ticket, user_key=req.user_key),
        req.agent,
        labels,
        call.prompt_size(),
    )
    stream = await gateway.stream(call_info(request, FRONT), call, caller, labels)
    settings = request.app.state.settings
    try:
        await stream.wait_open(settings.open_wait)
    except BaseException:
        await stream.aclose()
        raise
    return CallStreamResponse(
        stream,
        SeedEvents(),
        media_type="text/event-stream; charset=utf-8",
        headers=[("Cache-Control", "no-cache, no-transform"), ("X-Accel-Buffering", "no")],
        ping=b": keep-alive\n\n",
        keepalive=settings.keepalive,
        send_timeout=settings.send_timeout,
    )


async def tickets(request: Request) -> Response:
    """A single-use ticket for a browser EventSource, which cannot send Authorization."""
    gateway = gateway_of(request)
    caller = await gateway.identify(credentials(request))
    ticket = await identity.ticket(gateway.access, caller)
    return JSON(Ticket(ticket=ticket, expires_in=TICKET_SECONDS), status_code=201)


routes = [
    Route("/api/v1/ai/models", models, methods=["GET"]),
    Route("/api/v1/ai/ask_sync", ask_sync, methods=["POST"]),
    Route("/api/v1/ai/ask_async", ask_async, methods=["GET", "POST"]),
    Route("/api/v1/ai/tickets", tickets, methods=["POST"]),
]


_ASK_ERRORS = {
    400: error("The body is not JSON (`invalid_json`), or Ollama refused the request."),
    401: UNAUTHORIZED,
    403: error("This API key may not use this model (`model_not_allowed`)."),
    413: error("The body or the prompt is too large (`body_too_large`, `prompt_too_large`)."),
    429: error("A rate, token or stream limit is reached (`rate_limited`).", retry=True),
    404: error("Ollama has no such model (`model_not_found`); `ollama pull` it first."),
    422: error("The JSON is not a valid ask (`invalid_request`); the message names the field."),
    502: error("Ollama is unreachable, failed, or answered nonsense (`upstream_*`)."),
    503: error("Ollama is busy, or the gateway is shutting down.", retry=True),
    504: error("Ollama sent nothing for `--timeout` seconds (`upstream_timeout`)."),
}
_EVENTS = {"start": StartEvent, "token": TokenEvent, "done": Usage, "error": ErrorBody}
_STREAM = Reply(
    description="The answer as Server-Sent Events: one `start`, a `token` per chunk, then "
    "`done` with the call's usage or `error` (also sent when the gateway shuts down "
    "before the answer ends, with code `server_shutdown`).",
    events=_EVENTS,
)
_STREAM_ABOUT = (
    "Failures noticed before the stream opens (within `--open-wait` seconds) keep their "
    "HTTP status; later ones arrive as an `error` event."
)

openapi: Paths = {
    "/api/v1/ai/models": {
        "GET": Operation(
            summary="List the models Ollama has",
            tag="ai",
            replies={
                200: Reply(description="Model names, as `ollama list` shows them.", json=list[str]),
                502: _ASK_ERRORS[502],
                503: _ASK_ERRORS[503],
                504: _ASK_ERRORS[504],
            },
        )
    },
    "/api/v1/ai/ask_sync": {
        "POST": Operation(
            summary="Ask and wait for the whole answer",
            tag="ai",
            description="The answer is plain text, or JSON with its usage when the client "
            "prefers `application/json` in `Accept`.",
            body=AskRequest,
            auth=CALLER,
            headers={"Accept": "`application/json` for a JSON reply; plain text otherwise."},
            replies={
                200: Reply(description="The answer.", text="text/plain", json=AskReply),
                **_ASK_ERRORS,
            },
        )
    },
    "/api/v1/ai/ask_async": {
        "POST": Operation(
            summary="Ask and stream the answer",
            tag="ai",
            description=_STREAM_ABOUT,
            body=AskRequest,
            auth=CALLER,
            replies={200: _STREAM, **_ASK_ERRORS},
        ),
        "GET": Operation(
            summary="Ask and stream the answer (for EventSource)",
            tag="ai",
            description="The same ask as POST, with the body's fields as query parameters, "
            "so a browser's `EventSource` can open it. " + _STREAM_ABOUT,
            query=StreamQuery,
            auth=CALLER,
            headers={
                "Last-Event-ID": "Sent by a reconnecting EventSource; answered with 204, "
                "since an answer cannot be resumed."
            },
            replies={
                200: _STREAM,
                204: Reply(description="A reconnect after the stream ended: stop."),
                **_ASK_ERRORS,
            },
        ),
    },
    "/api/v1/ai/tickets": {
        "POST": Operation(
            summary="A single-use stream ticket for EventSource",
            tag="ai",
            description="A browser EventSource cannot send `Authorization`. Get a ticket with "
            "your key (or the admin cookie), then open "
            "`GET /api/v1/ai/ask_async?...&ticket=<ticket>` within `expires_in` seconds; "
            "it works once.",
            auth=CALLER,
            replies={
                201: Reply(description="The ticket.", json=Ticket),
                401: UNAUTHORIZED,
            },
        )
    },
}
