"""The OpenAI API in the OpenAPI document."""

from __future__ import annotations

import functools

from ..asking import LABEL_HEADERS
from ..openapi import CALLER, Operation, Paths, Reply, error
from .schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    Model,
    ModelList,
    OpenAIError,
    TextCompletion,
)

_error = functools.partial(error, shape=OpenAIError)


_LIST_ERRORS = {
    401: _error("No valid API key, once keys exist (`AuthenticationError`)."),
    502: _error("Ollama is unreachable, failed, or answered nonsense."),
    503: _error("Ollama is busy.", retry=True),
    504: _error("Ollama sent nothing for `--timeout` seconds."),
}
_ASK_ERRORS = {
    400: _error(
        "The body is not JSON, has a wrong or unknown field (`param` names it), `n` other "
        "than 1, an image that is not a base64 data: URL, or a bad model name "
        "(`BadRequestError`)."
    ),
    403: _error("This API key may not use this model (`PermissionDeniedError`)."),
    404: _error("Ollama has no such model (`NotFoundError`)."),
    413: _error("The body, the prompt, or the number of inputs is too large."),
    429: _error("A rate, token or stream limit is reached (`RateLimitError`).", retry=True),
    499: _error("The client closed the connection before the answer."),
    **_LIST_ERRORS,
}
_STREAMED = (
    "With `stream: true`, Server-Sent Events: one `data:` chunk per piece of the answer, a "
    "last chunk with `finish_reason`, a usage chunk when `stream_options.include_usage` is "
    "set, then `data: [DONE]`. Labels for the accounting come from the `X-Project`, "
    "`X-Process-Id` and `X-Subprocess-Id` headers."
)

openapi: Paths = {
    "/v1/chat/completions": {
        "POST": Operation(
            summary="Chat completion (OpenAI's API)",
            tag="openai",
            description="Asked of Ollama's native chat, so the record keeps its timings. "
            + _STREAMED,
            body=ChatCompletionRequest,
            auth=CALLER,
            headers=dict(LABEL_HEADERS),
            replies={
                200: Reply(
                    description="The completion, or its chunks as Server-Sent Events.",
                    json=ChatCompletion,
                    events={"": (ChatCompletionChunk, OpenAIError)},
                    last_data="[DONE]",
                ),
                **_ASK_ERRORS,
            },
        )
    },
    "/v1/completions": {
        "POST": Operation(
            summary="Text completion (OpenAI's legacy API)",
            tag="openai",
            description="Asked of Ollama's native generate. " + _STREAMED,
            body=CompletionRequest,
            auth=CALLER,
            headers=dict(LABEL_HEADERS),
            replies={
                200: Reply(
                    description="The completion, or its chunks as Server-Sent Events.",
                    json=TextCompletion,
                    events={"": (TextCompletion, OpenAIError)},
                    last_data="[DONE]",
                ),
                **_ASK_ERRORS,
            },
        )
    },
    "/v1/embeddings": {
        "POST": Operation(
            summary="Embeddings (OpenAI's API)",
            tag="openai",
            description="The record keeps the input token count and the number of inputs, "
            "never the vectors. At most 2,048 inputs a call.",
            body=EmbeddingRequest,
            auth=CALLER,
            headers=dict(LABEL_HEADERS),
            replies={200: Reply(description="The vectors.", json=EmbeddingList), **_ASK_ERRORS},
        )
    },
}

# GET /v1/models in OpenAI's shape: one of the two shapes routes/models.py documents.
models_openapi: Paths = {
    "/v1/models": {
        "GET": Operation(
            summary="The models (that this key may use)",
            tag="openai",
            auth=CALLER,
            replies={200: Reply(description="The models.", json=ModelList), **_LIST_ERRORS},
        )
    },
    "/v1/models/{model}": {
        "GET": Operation(
            summary="One model",
            tag="openai",
            path={"model": "The model's name, as `ollama list` shows it."},
            auth=CALLER,
            replies={
                200: Reply(description="The model.", json=Model),
                400: _ASK_ERRORS[400],
                403: _ASK_ERRORS[403],
                404: _ASK_ERRORS[404],
                **_LIST_ERRORS,
            },
        )
    },
}
