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

from schemas import AskReply, AskRequest, Usage
from service import Call, StreamedCall

from .common import JSON, decode_body, decode_query, gateway_of


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
    call = await _unless_client_leaves(request, gateway_of(request).ask(req))
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

    def __init__(self, call: StreamedCall, *, keepalive: float) -> None:
        super().__init__(
            call.events(),
            ping=keepalive,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
            headers={
                "Cache-Control": "no-cache, no-transform",
                "X-Request-Id": call.id,
            },
        )
        self.call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.call.aclose()

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # sse-starlette opens an anyio cancel scope around every event, even with no send
        # timeout set (ours); per relayed token that was a tenth of the gateway's CPU.
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


async def ask_async(request: Request) -> Response:
    if request.method == "GET":
        if "last-event-id" in request.headers:
            # An EventSource reconnecting after its stream ended. An answer cannot be
            # resumed, and 204 is what tells a browser to stop reconnecting.
            return Response(status_code=204)
        req = decode_query(request, AskRequest)
    else:
        req = await decode_body(request, AskRequest)
    gateway = gateway_of(request)
    call = gateway.stream(req)
    try:
        await call.wait_open(gateway.settings.open_wait)
    except BaseException:
        await call.aclose()
        raise
    return CallEvents(call, keepalive=gateway.settings.keepalive)


routes = [
    Route("/api/v1/ai/models", models, methods=["GET"]),
    Route("/api/v1/ai/ask_sync", ask_sync, methods=["POST"]),
    Route("/api/v1/ai/ask_async", ask_async, methods=["GET", "POST"]),
]
