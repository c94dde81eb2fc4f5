"""OpenAI's Responses API in the OpenAPI document."""

from __future__ import annotations

import functools

from ..asking import LABEL_HEADERS
from ..openai.schemas import OpenAIError
from ..openapi import CALLER, Operation, Paths, Reply, error
from .schemas import (
    ArgumentsDelta,
    ArgumentsDone,
    ContentPartEvent,
    OutputItemEvent,
    Response,
    ResponseLifecycle,
    ResponsesRequest,
    TextDelta,
    TextDone,
)

_error = functools.partial(error, shape=OpenAIError)

_LIFECYCLE = (
    "response.created",
    "response.in_progress",
    "response.completed",
    "response.incomplete",
    "response.failed",
)

openapi: Paths = {
    "/v1/responses": {
        "POST": Operation(
            summary="Create a response (OpenAI's Responses API), stateless",
            tag="openai",
            description="Asked of the upstream's native chat, so the record keeps its timings. "
            "Stateless, as Ollama's own /v1/responses: send the whole conversation as `input` "
            "items; `previous_response_id`, `store: true`, `conversation` and `background` are "
            "refused (400, `param` names the field). With `stream: true`, Server-Sent Events, "
            "each `event:` its data's `type`: `response.created`, `response.in_progress`, per "
            "output item `response.output_item.added` ... `response.output_item.done` (text "
            "deltas, reasoning text deltas, function call arguments), then "
            "`response.completed` with `usage` (`response.incomplete` when "
            "`max_output_tokens` cut it short, `response.failed` when the call failed after "
            "the stream began). Labels for the accounting come from the `X-Project`, "
            "`X-Process-Id` and `X-Subprocess-Id` headers.",
            body=ResponsesRequest,
            auth=CALLER,
            headers=dict(LABEL_HEADERS),
            replies={
                200: Reply(
                    description="The response, or its events as Server-Sent Events.",
                    json=Response,
                    events={
                        **dict.fromkeys(_LIFECYCLE, ResponseLifecycle),
                        "response.output_item.added": OutputItemEvent,
                        "response.output_item.done": OutputItemEvent,
                        "response.content_part.added": ContentPartEvent,
                        "response.content_part.done": ContentPartEvent,
                        "response.output_text.delta": TextDelta,
                        "response.output_text.done": TextDone,
                        "response.reasoning_text.delta": TextDelta,
                        "response.reasoning_text.done": TextDone,
                        "response.function_call_arguments.delta": ArgumentsDelta,
                        "response.function_call_arguments.done": ArgumentsDone,
                    },
                    event_ids=False,
                ),
                400: _error(
                    "The body is not JSON, has a wrong or unknown field, an input item or "
                    "content part of a type not taken, a tool not of type function, or asks "
                    "for stored state (`previous_response_id`, `store: true`); `param` names "
                    "the field (`BadRequestError`)."
                ),
                401: _error("No valid API key, once keys exist (`AuthenticationError`)."),
                403: _error("This API key may not use this model (`PermissionDeniedError`)."),
                404: _error("The upstream has no such model (`NotFoundError`)."),
                413: _error("The body or the prompt is too large."),
                429: _error(
                    "A rate, token or stream limit is reached (`RateLimitError`).", retry=True
                ),
                499: _error("The client closed the connection before the answer."),
                502: _error("The upstream is unreachable, failed, or answered nonsense."),
                503: _error("The upstream is busy.", retry=True),
                504: _error("The upstream sent nothing for `--timeout` seconds."),
            },
        )
    },
}
