"""The seed's API, /api/v1/ai: the models list, the two ways to ask, and stream tickets."""

from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from access import identity
from access.tickets import TICKET_SECONDS

from ..asking import answer_headers, ask_of, credentials_of, whole
from ..common import JSON, decode_body, decode_query, gateway_of
from ..streaming import CallStreamResponse, stream_response
from .framing import SeedEvents
from .schemas import AskReply, AskRequest, StreamQuery, Ticket, Usage
from .translate import call_of

FRONT = "seed"


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
    neutral, labels = call_of(req)
    who = credentials_of(request, user_key=req.user_key)
    ask = ask_of(request, FRONT, neutral, credentials=who, labels=labels)
    call = await gateway_of(request).call(ask)
    finished = await whole(request, call.answer())
    record = finished.record
    headers = answer_headers(call)
    if wants_json(request.headers.get("accept")):
        reply = AskReply(
            id=record.id,
            model=req.agent,
            output=record.output,
            thinking=finished.result.thinking or None,
            usage=Usage.of(record),
        )
        return JSON(reply, headers=headers)
    return PlainTextResponse(finished.result.content, headers=headers)


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
    neutral, labels = call_of(req)
    who = credentials_of(request, ticket=ticket, user_key=req.user_key)
    ask = ask_of(request, FRONT, neutral, stream=True, credentials=who, labels=labels)
    call = await gateway_of(request).call(ask)
    return stream_response(request, call, SeedEvents())


async def tickets(request: Request) -> Response:
    """A single-use ticket for a browser EventSource, which cannot send Authorization."""
    gateway = gateway_of(request)
    caller = await gateway.identify(credentials_of(request))
    ticket = await identity.ticket(gateway.access, caller)
    return JSON(Ticket(ticket=ticket, expires_in=TICKET_SECONDS), status_code=201)


routes = [
    Route("/api/v1/ai/models", models, methods=["GET"]),
    Route("/api/v1/ai/ask_sync", ask_sync, methods=["POST"]),
    Route("/api/v1/ai/ask_async", ask_async, methods=["GET", "POST"]),
    Route("/api/v1/ai/tickets", tickets, methods=["POST"]),
]
