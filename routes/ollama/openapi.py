"""Ollama's API in the OpenAPI document."""

from __future__ import annotations

import functools
from typing import Any

from ..asking import LABEL_HEADERS
from ..openapi import CALLER, Operation, Paths, Reply, error
from ..streaming import NDJSON
from .handlers import MANAGEMENT
from .schemas import (
    ChatReply,
    ChatRequest,
    EmbedBody,
    EmbeddingReply,
    EmbeddingsBody,
    EmbedReply,
    GenerateReply,
    GenerateRequest,
    Models,
    OllamaError,
    Running,
    ShowBody,
    ShowReply,
    VersionReply,
)

_error = functools.partial(error, shape=OllamaError)


_LIST_ERRORS = {
    401: _error("No valid API key, once keys exist."),
    502: _error("Ollama is unreachable, failed, or answered nonsense."),
    503: _error("Ollama is busy.", retry=True),
    504: _error("Ollama sent nothing for `--timeout` seconds."),
}
_ASK_ERRORS = {
    400: _error(
        "The body is not JSON, has a wrong field (the message names it), an image that is "
        "not base64, a bad model name, or Ollama refused the request."
    ),
    403: _error("This API key may not use this model."),
    404: _error("Ollama has no such model; `ollama pull` it on the server first."),
    413: _error("The body, the prompt, or the number of inputs is too large."),
    429: _error("A rate, token or stream limit is reached.", retry=True),
    499: _error("The client closed the connection before the answer."),
    **_LIST_ERRORS,
}
_LABELS = dict(LABEL_HEADERS)
_STREAMS = (
    "Streamed by default as `application/x-ndjson`, one JSON object a line, the last with "
    '`"done": true` and the metrics; with `"stream": false`, one object. A failure after '
    'the stream began is a last line `{"error": "..."}`. Labels for the accounting come '
    "from the `X-Project`, `X-Process-Id` and `X-Subprocess-Id` headers."
)


def _ask_op(summary: str, body: Any, reply: Any, tag_text: str) -> Operation:
    return Operation(
        summary=summary,
        tag="ollama",
        description=f"{tag_text} {_STREAMS}",
        body=body,
        auth=CALLER,
        headers=_LABELS,
        replies={
            200: Reply(
                description="The answer: NDJSON lines (`ChatChunk`/`GenerateChunk`, then the "
                "final object) when streamed, one final object otherwise.",
                json=reply,
                text=NDJSON,
            ),
            **_ASK_ERRORS,
        },
    )


_MANAGEMENT = Operation(
    summary="Refused: model management is not passed on",
    tag="ollama",
    description="403 with a message saying so: pull, push, create, copy and delete models on "
    "the Ollama server itself.",
    replies={403: _error("The gateway does not pass model management on.")},
)

openapi: Paths = {
    "/api/chat": {
        "POST": _ask_op(
            "Chat (Ollama's API)",
            ChatRequest,
            ChatReply,
            "Ollama's /api/chat: messages with images and tool calls, tools, format (`json` "
            "or a JSON schema), options, keep_alive, think.",
        )
    },
    "/api/generate": {
        "POST": _ask_op(
            "Complete a prompt (Ollama's API)",
            GenerateRequest,
            GenerateReply,
            "Ollama's /api/generate: prompt, system, template, raw, suffix, context, images.",
        )
    },
    "/api/embed": {
        "POST": Operation(
            summary="Embed texts (Ollama's API)",
            tag="ollama",
            description="The record keeps the input token count and the number of inputs, "
            "never the vectors. At most 2,048 inputs a call.",
            body=EmbedBody,
            auth=CALLER,
            headers=_LABELS,
            replies={200: Reply(description="The vectors.", json=EmbedReply), **_ASK_ERRORS},
        )
    },
    "/api/embeddings": {
        "POST": Operation(
            summary="Embed one text (Ollama's older API)",
            tag="ollama",
            description="Asked upstream as /api/embed, whose vectors are normalized.",
            body=EmbeddingsBody,
            auth=CALLER,
            headers=_LABELS,
            replies={200: Reply(description="The vector.", json=EmbeddingReply), **_ASK_ERRORS},
        )
    },
    "/api/tags": {
        "GET": Operation(
            summary="The models Ollama has (that this key may use)",
            tag="ollama",
            auth=CALLER,
            replies={200: Reply(description="Ollama's /api/tags.", json=Models), **_LIST_ERRORS},
        )
    },
    "/api/ps": {
        "GET": Operation(
            summary="The models loaded now (that this key may use)",
            tag="ollama",
            auth=CALLER,
            replies={200: Reply(description="Ollama's /api/ps.", json=Running), **_LIST_ERRORS},
        )
    },
    "/api/show": {
        "POST": Operation(
            summary="What Ollama says of a model",
            tag="ollama",
            body=ShowBody,
            auth=CALLER,
            replies={
                200: Reply(description="Ollama's /api/show.", json=ShowReply),
                400: _ASK_ERRORS[400],
                403: _ASK_ERRORS[403],
                404: _ASK_ERRORS[404],
                **_LIST_ERRORS,
            },
        )
    },
    "/api/version": {
        "GET": Operation(
            summary="Ollama's version",
            tag="ollama",
            description="Open without a key, as /health is.",
            replies={
                200: Reply(description="The upstream Ollama's version.", json=VersionReply),
                502: _LIST_ERRORS[502],
                503: _LIST_ERRORS[503],
                504: _LIST_ERRORS[504],
            },
        )
    },
    **{f"/api/{name}": {"POST": _MANAGEMENT} for name in MANAGEMENT},
    "/api/delete": {"DELETE": _MANAGEMENT},
    "/api/blobs/{digest}": {
        "POST": Operation(
            summary=_MANAGEMENT.summary,
            tag="ollama",
            description=_MANAGEMENT.description,
            path={"digest": "The blob's digest."},
            replies=_MANAGEMENT.replies,
        )
    },
}
