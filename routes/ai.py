"""/api/v1/ai: the models list and the two ways to ask."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from guard import SESSION_COOKIE
from keys import TICKET_SECONDS
from schemas import AskReply, AskRequest, ErrorBody, StartEvent, Ticket, TokenEvent, Usage
from service import Call, Caller, Credentials, StreamedCall

from .common import JSON, decode_body, decode_query, gateway_of
from .openapi import CALLER, UNAUTHORIZED, Operation, Paths, Reply, error

# The scope key under which GatewayApp puts the server's own `send`, for stream bodies.
SERVER_SEND = "ollama_host.server_send"

# Seconds after the grace period before sse-starlette cuts a stream of a stopping server
# without a last word; the call's own `server_shutdown` event comes first.
SHUTDOWN_MARGIN = 2.0


def credentials(request: Request, *, ticket: str | None = None) -> Credentials:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return Credentials(bearer=bearer, session=request.cookies.get(SESSION_COOKIE), ticket=ticket)


def admitted(request: Request, req: AskRequest, *, ticket: str | None = None) -> Caller:
    """Who asks, whether they may, and whether limits allow it now (401, 403, 413, 429)."""
    gateway = gateway_of(request)
    caller = gateway.authorize(req, credentials(request, ticket=ticket))
    gateway.admit(req, caller)
    return caller


async def models(request: Request) -> Response:
    return JSON(await gateway_of(request).ollama.models())


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


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, Call]) -> Call | None:
    """Run `work`, but cancel it if the client hangs up first (so Ollama stops too).

    The work runs in this task and only the watcher gets one of its own: a task and an
    asyncio.wait less per ask than running both side by side.
    """
    task = asyncio.current_task()
    assert task is not None
    running = True
    left = False

    def on_watcher_done(watcher: asyncio.Future[None]) -> None:
        nonlocal left
        if watcher.cancelled() or watcher.exception() is not None or not running:
            return
        left = True
        task.cancel()

    watcher = asyncio.ensure_future(_disconnected(request.receive))
    watcher.add_done_callback(on_watcher_done)
    try:
        return await work
    except asyncio.CancelledError:
        # Only our own cancel becomes "the client left"; a shutdown's cancel propagates.
        if left and task.uncancel() == 0:
            return None
        raise
    finally:
        running = False
        watcher.cancel()


async def ask_sync(request: Request) -> Response:
    req = await decode_body(request, AskRequest)
    caller = admitted(request, req)
    call = await _unless_client_leaves(request, gateway_of(request).ask(req, caller))
    if call is None:
        # Nobody is listening; the call is recorded as cancelled.
        return Response(status_code=499)
    assert call.record is not None
    headers = {"X-Request-Id": call.id}
    if wants_json(request.headers.get("accept")):
        reply = AskReply(
            id=call.id,
            model=req.agent,
            output=call.output,
            thinking="".join(call.thinking) or None,
            usage=Usage.of(call.record),
        )
        return JSON(reply, headers=headers)
    return PlainTextResponse(call.output, headers=headers)


class CallEvents(EventSourceResponse):
    """The SSE response of one streamed call; closing it always closes the call."""

    def __init__(self, call: StreamedCall, *, keepalive: float, grace: float) -> None:
        super().__init__(
            call.events(),
            ping=keepalive,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
            headers={
                "Cache-Control": "no-cache, no-transform",
                "X-Request-Id": call.id,
            },
            # On shutdown the call itself ends the stream after `grace` seconds, with a
            # final `error` event; sse-starlette's own cut-off must come later than that.
            shutdown_grace_period=grace + SHUTDOWN_MARGIN,
        )
        self.call = call
        self._body_send: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._body_send = scope.get(SERVER_SEND)
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.call.aclose()

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # sse-starlette opens an anyio cancel scope around every event, even with no send
        # timeout set (ours); per relayed token that was a tenth of the gateway's CPU.
        if self.send_timeout is None:
            body_send = self._body_send
            if body_send is not None and message["type"] == "http.response.body":
                # Past the middleware, whose wrappers only look at the response start.
                await body_send(message)
            else:
                await send(message)
        else:
            await super()._send_with_timeout(send, message)


class StreamQuery(AskRequest, kw_only=True):
    """The GET stream's query: the ask's fields, and a ticket in place of a header."""

    ticket: str | None = None


async def ask_async(request: Request) -> Response:
    req: AskRequest
    if request.method == "GET":
        query = decode_query(request, StreamQuery)
        if "last-event-id" in request.headers:
            # An EventSource reconnecting after its stream ended. An answer cannot be
            # resumed, and 204 is what tells a browser to stop reconnecting.
            return Response(status_code=204)
        req = query
        caller = admitted(request, req, ticket=query.ticket)
    else:
        req = await decode_body(request, AskRequest)
        caller = admitted(request, req)
    gateway = gateway_of(request)
    call = gateway.stream(req, caller)
    try:
        await call.wait_open(gateway.settings.open_wait)
    except BaseException:
        await call.aclose()
        raise
    settings = gateway.settings
    return CallEvents(call, keepalive=settings.keepalive, grace=settings.grace)


async def tickets(request: Request) -> Response:
    """A single-use ticket for a browser EventSource, which cannot send Authorization."""
    gateway = gateway_of(request)
    caller = gateway.identify(credentials(request))
    return JSON(Ticket(ticket=gateway.ticket(caller), expires_in=TICKET_SECONDS), status_code=201)


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
