"""Anthropic's Messages API in the OpenAPI document."""

from __future__ import annotations

import functools

from ..asking import LABEL_HEADERS
from ..openapi import CALLER, Header, Operation, Paths, Reply, error
from .handlers import VERSIONS
from .schemas import (
    AnthropicError,
    AnthropicMessage,
    AnthropicModel,
    AnthropicModelList,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    CountTokensRequest,
    MessageDelta,
    MessagesRequest,
    MessageStart,
    MessageStop,
    ModelsQuery,
    Ping,
    TokenCount,
)

_error = functools.partial(error, shape=AnthropicError)

_HEADERS: dict[str, str | Header] = {
    "anthropic-version": Header(
        description="The API's version, required as Anthropic requires it.",
        required=True,
        enum=tuple(sorted(VERSIONS)),
    ),
    "anthropic-beta": "Accepted and ignored.",
    **LABEL_HEADERS,
}
_AUTH = ("xApiKey", *CALLER)
_ERRORS = {
    400: _error(
        "The body is not JSON, lacks `max_tokens`, has a wrong field, an unknown content "
        "block type, a `tool_result` for no `tool_use` of the message before, an image that "
        "is not base64, or a bad model name; or `anthropic-version` is missing or unknown "
        "(`invalid_request_error`, `BadRequestError`)."
    ),
    401: _error("No valid API key, once keys exist (`authentication_error`)."),
    403: _error("This API key may not use this model (`permission_error`)."),
    404: _error("No upstream has this model (`not_found_error`)."),
    413: _error("The body or the prompt is too large (`request_too_large`)."),
    429: _error("A rate, token or stream limit is reached (`rate_limit_error`).", retry=True),
    499: _error("The client closed the connection before the answer."),
    502: _error("The upstream is unreachable, failed, or answered nonsense (`api_error`)."),
    503: _error("The upstream is busy (`overloaded_error`).", retry=True),
    504: _error("The upstream sent nothing for `--timeout` seconds (`api_error`)."),
}

openapi: Paths = {
    "/v1/messages": {
        "POST": Operation(
            summary="A message (Anthropic's Messages API)",
            tag="anthropic",
            description="Asked of the upstream's chat (Ollama's native chat, or Chat "
            "Completions), so the record keeps its timings. With `stream: true`, Anthropic's "
            "named Server-Sent Events: `message_start`, `ping`, per content block "
            "`content_block_start`, `content_block_delta`s and `content_block_stop`, then "
            "`message_delta` (stop reason, usage) and `message_stop`; `error` after a failure. "
            "Labels for the accounting come from the `X-Project`, `X-Process-Id` and "
            "`X-Subprocess-Id` headers.",
            body=MessagesRequest,
            auth=_AUTH,
            headers=_HEADERS,
            replies={
                200: Reply(
                    description="The message, or its events.",
                    json=AnthropicMessage,
                    events={
                        "message_start": MessageStart,
                        "ping": Ping,
                        "content_block_start": ContentBlockStart,
                        "content_block_delta": ContentBlockDelta,
                        "content_block_stop": ContentBlockStop,
                        "message_delta": MessageDelta,
                        "message_stop": MessageStop,
                        "error": AnthropicError,
                    },
                    event_ids=False,
                ),
                **_ERRORS,
            },
        )
    },
    "/v1/messages/count_tokens": {
        "POST": Operation(
            summary="Count a message's tokens (Anthropic's Messages API)",
            tag="anthropic",
            description="Asked of the upstream as the same chat for one token: the count is "
            "the upstream's own (its tokenizer and chat template), and the call is recorded "
            "and limited as any other.",
            body=CountTokensRequest,
            auth=_AUTH,
            headers=_HEADERS,
            replies={200: Reply(description="The prompt's tokens.", json=TokenCount), **_ERRORS},
        )
    },
}

# GET /v1/models in Anthropic's shape: one of the two shapes routes/models.py documents.
_VERSION = Header(
    description="The API's version; it makes the answer Anthropic's.",
    required=True,
    enum=tuple(sorted(VERSIONS)),
)
_MODELS_ERRORS = {
    400: _error(
        "`limit` is not 1 to 1000, `after_id` or `before_id` is not a model of the list, "
        "both are given, or `anthropic-version` is unknown (`invalid_request_error`)."
    ),
    401: _ERRORS[401],
    502: _ERRORS[502],
    503: _ERRORS[503],
    504: _ERRORS[504],
}
models_openapi: Paths = {
    "/v1/models": {
        "GET": Operation(
            summary="The models (Anthropic's Models API)",
            tag="anthropic",
            description="Anthropic's shape: a page of `limit` models after `after_id` or "
            "before `before_id`, in the upstream's order; `lifecycle[]` is taken (every "
            "model is `active`).",
            query=ModelsQuery,
            auth=_AUTH,
            headers={"anthropic-version": _VERSION},
            replies={
                200: Reply(
                    description="A page of models, with `has_more`, `first_id` and `last_id`.",
                    json=AnthropicModelList,
                ),
                **_MODELS_ERRORS,
            },
        )
    },
    "/v1/models/{model}": {
        "GET": Operation(
            summary="One model (Anthropic's Models API)",
            tag="anthropic",
            path={"model": "The model's name, as `ollama list` shows it."},
            auth=_AUTH,
            headers={"anthropic-version": _VERSION},
            replies={
                200: Reply(description="The model (`ModelInfo`).", json=AnthropicModel),
                400: _error(
                    "A bad model name, or `anthropic-version` is unknown (`invalid_request_error`)."
                ),
                403: _error("This API key may not use this model (`permission_error`)."),
                404: _ERRORS[404],
                **{s: r for s, r in _MODELS_ERRORS.items() if s != 400},
            },
        )
    },
}
