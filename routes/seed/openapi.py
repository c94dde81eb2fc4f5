"""The seed's API in the OpenAPI document."""

from __future__ import annotations

from ..errors import ErrorBody
from ..openapi import CALLER, UNAUTHORIZED, Operation, Paths, Reply, error
from .schemas import (
    AskReply,
    AskRequest,
    LoadingEvent,
    QueuedEvent,
    ResumeQuery,
    StartEvent,
    StreamQuery,
    StreamRequest,
    Ticket,
    TokenEvent,
    Usage,
)

_ASK_ERRORS = {
    401: UNAUTHORIZED,
    403: error("This API key may not use this model (`model_not_allowed`)."),
    413: error("The body or the prompt is too large (`body_too_large`, `prompt_too_large`)."),
    400: error(
        "The body is not JSON (`invalid_json`), X-Priority names no class "
        "(`invalid_priority`), or Ollama refused the request."
    ),
    429: error(
        "A rate, token or stream limit is reached (`rate_limited`), or the key has "
        "`--queue-per-key` calls waiting already (`queue_full`).",
        retry=True,
    ),
    404: error("Ollama has no such model (`model_not_found`); `ollama pull` it first."),
    422: error("The JSON is not a valid ask (`invalid_request`); the message names the field."),
    502: error("Ollama is unreachable, failed, or answered nonsense (`upstream_*`)."),
    503: error("Ollama is busy, or the gateway is shutting down.", retry=True),
    504: error("Ollama sent nothing for `--timeout` seconds (`upstream_timeout`)."),
}
_EVENTS = {
    "start": StartEvent,
    "queued": QueuedEvent,
    "loading": LoadingEvent,
    "token": TokenEvent,
    "done": Usage,
    "error": ErrorBody,
}
_STREAM = Reply(
    description="The answer as Server-Sent Events: one `start`; while the call waits for a "
    "free upstream slot, `queued` with its place in line whenever it changes; `loading` if "
    "its upstream loads the model first; a `token` per chunk; then `done` with the call's "
    "usage or `error` (also sent when the gateway shuts down before the answer ends, with "
    "code `server_shutdown`).",
    events=_EVENTS,
    unnumbered=("error",),
)
_STREAM_ABOUT = (
    "Failures noticed before the stream opens (within `--open-wait` seconds) keep their "
    "HTTP status; later ones arrive as an `error` event. A resumable stream (GET by "
    'default, POST with `"resumable": true`) goes on for `--resume-window` seconds after '
    "its client left; its `start` event's `resume` handle resumes it."
)
_RESUMED = Reply(
    description="The events after `Last-Event-ID`, then the live rest; or a single `error` "
    "event without an id: `invalid_last_event_id` (not a number, or beyond the stream's "
    "end), `events_dropped` (let go past `--resume-buffer`), `stream_expired` (nobody "
    "resumed it within `--resume-window`).",
    events=_EVENTS,
    unnumbered=("error",),
)
_LAST_EVENT_ID = (
    "The id of the last event received (a reconnecting EventSource sends it): the stream "
    "goes on after it."
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
            body=StreamRequest,
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
                "Last-Event-ID": "Sent by a reconnecting EventSource. With the ticket the "
                "stream was opened with, the stream goes on after that event (see "
                "`/api/v1/ai/resume`); otherwise, or once everything was sent, 204."
            },
            replies={
                200: _STREAM,
                204: Reply(
                    description="A reconnect with nothing to resume, or nothing left: stop."
                ),
                **_ASK_ERRORS,
            },
        ),
    },
    "/api/v1/ai/resume": {
        "GET": Operation(
            summary="Resume a stream after a dropped connection",
            tag="ai",
            description="A resumable stream whose client left goes on generating for "
            "`--resume-window` seconds, its events kept. Its own caller (the same key, the "
            "admin, or anyone while no key exists; a fresh `ticket` for an EventSource) gets "
            "the events after `Last-Event-ID`, then the live rest: none twice, none skipped, "
            "and the model asked once. The streams are kept by the gateway process that "
            "streamed them.",
            query=ResumeQuery,
            auth=CALLER,
            headers={"Last-Event-ID": _LAST_EVENT_ID},
            replies={
                200: _RESUMED,
                204: Reply(description="The client has every event already: stop."),
                401: UNAUTHORIZED,
                404: error("No stream by this handle for this caller (`stream_not_found`), here."),
                422: _ASK_ERRORS[422],
            },
        )
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
