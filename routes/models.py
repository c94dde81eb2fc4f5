"""GET /v1/models and GET /v1/models/{model}: one path, two APIs' model listings.

OpenAI's clients and Anthropic's both list models here. Anthropic's SDKs always send
`anthropic-version` and OpenAI's never do, so that header picks Anthropic's shape (paged, its
errors in its own shape: routes/anthropic/models.py) and its absence OpenAI's, exactly as
before the header meant anything (routes/openai/handlers.py). Both show a caller the same
models (`routes.asking.visible_models`). Neither front imports the other: they meet here.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .anthropic import models as anthropic
from .anthropic.handlers import VERSIONS
from .anthropic.openapi import models_openapi as anthropic_openapi
from .openai import handlers as openai
from .openai.openapi import models_openapi as openai_openapi
from .openapi import Header, Operation, Paths, either

# What marks an Anthropic client.
MARK = "anthropic-version"


async def models(request: Request) -> Response:
    if MARK in request.headers:
        return await anthropic.models(request)
    return await openai.models(request)


async def model(request: Request) -> Response:
    if MARK in request.headers:
        return await anthropic.model(request)
    return await openai.model(request)


routes = [
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model:path}", model, methods=["GET"]),
]


def _both(path: str, summary: str) -> Operation:
    return either(
        openai_openapi[path]["GET"],
        anthropic_openapi[path]["GET"],
        summary=summary,
        tag="models",
        header=MARK,
        about=Header(
            description="Sent by Anthropic's SDKs (never by OpenAI's): with it, the answer "
            "and its errors are in Anthropic's shape; without it, in OpenAI's.",
            enum=tuple(sorted(VERSIONS)),
        ),
    )


openapi: Paths = {
    "/v1/models": {"GET": _both("/v1/models", "The models (that this key may use)")},
    "/v1/models/{model}": {"GET": _both("/v1/models/{model}", "One model")},
}
