"""The seed's API, /api/v1/ai: the models list, the two ways to ask, and stream tickets."""

from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from access import identity
from access.tickets import TICKET_SECONDS
from calls.errors import CallError

from ..asking import answer_headers, ask_of, credentials_of, whole
from ..common import JSON, decode_body, decode_query, encoder, gateway_of
from ..errors import error_body, with_request_id
from ..resuming import Expired, Relay, Resumable, Resumes
from ..streaming import SSE, CallStreamResponse, SSEFraming, stream_response
from .framing import SeedEvents
from .schemas import (
    AskReply,
    AskRequest,
    ResumeQuery,
    StreamQuery,
    StreamRequest,
    Ticket,
    Usage,
)
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
    req: StreamRequest
    ticket = None
    get = request.method == "GET"
    if get:
        query = decode_query(request, StreamQuery)
        last = request.headers.get("last-event-id")
        if query.ticket is not None:
            found = resumes_of(request).by_ticket(query.ticket)
            # An EventSource reconnecting: the same URL, with the ticket it opened the stream
            # with, and the id of the last event it has (none if it lost the connection
            # before the first: then the stream from its start, while it still runs; the
            # ticket is spent for anything else).
            if found is not None and (
                last is not None or (isinstance(found, Resumable) and not found.finished)
            ):
                return resume(request, found, last)
        if last is not None:
            # A reconnect that names no stream kept here (one that was not resumable, or
            # whose ticket is unknown): 204 tells a browser to stop reconnecting.
            return Response(status_code=204)
        req, ticket = query, query.ticket
    else:
        req = await decode_body(request, StreamRequest)
    neutral, labels = call_of(req)
    who = credentials_of(request, ticket=ticket, user_key=req.user_key)
    ask = ask_of(request, FRONT, neutral, stream=True, credentials=who, labels=labels)
    call = await gateway_of(request).call(ask)
    if not (get if req.resumable is None else req.resumable):
        return stream_response(request, call, SeedEvents())
    handle = Resumes.new_handle()
    client = resumes_of(request).open(
        call,
        SeedEvents(handle),
        handle=handle,
        holder=identity.holder(call.caller),
        ticket=ticket,
    )
    return stream_response(request, client, Relay())


async def resume_stream(request: Request) -> Response | CallStreamResponse:
    """A resumable stream, again, for its own caller: the events after `Last-Event-ID`."""
    query = decode_query(request, ResumeQuery)
    caller = await gateway_of(request).identify(credentials_of(request, ticket=query.ticket))
    found = resumes_of(request).by_handle(query.stream, identity.holder(caller))
    if found is None:
        # Unknown, and another caller's, alike: a handle proves nothing on its own.
        raise CallError(
            404,
            "stream_not_found",
            "no stream to resume by this handle for this caller: resume with the key the "
            "stream was asked with, at the gateway that streamed it",
        )
    return resume(request, found, request.headers.get("last-event-id", query.last_event_id))


def resumes_of(request: Request) -> Resumes:
    resumes: Resumes = request.app.state.resumes
    return resumes


# Longest Last-Event-ID read as a number: more digits than any stream has events.
MAX_ID_DIGITS = 15


def resume(
    request: Request, found: Resumable | Expired, last: str | None
) -> Response | CallStreamResponse:
    """The rest of a kept stream after event `last` (None: all of it); or a single `error`
    event saying why not; or 204 when the client has it all already."""
    if isinstance(found, Expired):
        window = request.app.state.settings.resume_window
        return error_event(
            410,
            "stream_expired",
            f"nobody resumed this stream within --resume-window ({window:g} s): it was "
            "ended and its events let go; ask again",
        )
    after = -1
    text = (last or "").strip()
    if text:
        if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
            return error_event(
                400,
                "invalid_last_event_id",
                f"Last-Event-ID must be the number of an event this stream sent; got {text!r}",
            )
        after = int(text)
    end = found.end
    if after >= end:
        return error_event(
            400,
            "invalid_last_event_id",
            f"Last-Event-ID {after} is beyond this stream's end: its events so far are "
            f"numbered 0 to {end - 1}",
        )
    if request.method == "HEAD":
        # Headers only: a HEAD must not take the stream over from its client.
        return Response(media_type=SSE, headers=dict(SSEFraming.headers))
    if found.finished and after == end - 1:
        # Everything was received: nothing to send, and a browser stops reconnecting.
        return Response(status_code=204)
    if after + 1 < found.base:
        return error_event(
            410,
            "events_dropped",
            f"events {after + 1} to {found.base - 1} of this stream were let go "
            f"(it keeps --resume-buffer bytes); it can be resumed from event "
            f"{found.base - 1} on",
        )
    return stream_response(request, found.attach(after), Relay())


def error_event(status: int, code: str, message: str) -> Response:
    """A stream of one `error` event, with no id (so the client's last event id stays)."""
    body = error_body(with_request_id(CallError(status, code, message)))
    data = b"event: error\ndata: %s\n\n" % encoder.encode(body)
    return Response(data, media_type=SSE, headers=dict(SSEFraming.headers))


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
    Route("/api/v1/ai/resume", resume_stream, methods=["GET"]),
]
