"""OpenAI's Responses API at POST /v1/responses: the handler and its route."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..asking import answer_headers, ask_of, whole
from ..common import JSON, decode_body, gateway_of
from ..streaming import CallStreamResponse, stream_response
from .framing import ResponseEvents, response_reply, template_of
from .schemas import ResponsesRequest
from .translate import response_call

FRONT = "responses"


async def responses(request: Request) -> Response | CallStreamResponse:
    body = await decode_body(request, ResponsesRequest)
    ask = ask_of(request, FRONT, response_call(body), stream=bool(body.stream))
    call = await gateway_of(request).call(ask)
    template = template_of("resp_" + call.id, body)
    if body.stream:
        return stream_response(request, call, ResponseEvents(template))
    finished = await whole(request, call.answer())
    return JSON(response_reply(template, finished.result), headers=answer_headers(call))


routes = [Route("/v1/responses", responses, methods=["POST"])]
