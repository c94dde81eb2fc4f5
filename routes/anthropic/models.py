"""Anthropic's Models API: GET /v1/models (a page of models) and GET /v1/models/{model_id}.

The path is OpenAI's too; routes/models.py sends here the requests that carry
`anthropic-version`. The models and who may see them are the OpenAI listing's
(`visible_models`); only the shape is Anthropic's. As the path is under OpenAI's error
prefix, these handlers answer their errors in Anthropic's shape themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from calls.errors import CallError, UpstreamError, call_error
from calls.types import ModelInfo, ModelName

from .. import request_id
from ..asking import visible_model, visible_models
from ..common import JSON
from ..errors import with_request_id
from .errors import bad, error_response
from .handlers import anthropics_words, check_version, credentials_from
from .schemas import AnthropicModel, AnthropicModelList, ModelsQuery

# Anthropic's "release date unknown": the Unix epoch.
EPOCH = "1970-01-01T00:00:00Z"
LIFECYCLES = ("active", "deprecated", "retired")

Handler = Callable[[Request], Awaitable[Response]]


def in_anthropics_shape(handler: Handler) -> Handler:
    """Errors in Anthropic's shape (with Anthropic's words for a missing key), where the
    path alone would pick OpenAI's."""

    @wraps(handler)
    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except (CallError, UpstreamError) as exc:
            error = anthropics_words(call_error(exc), credentials_from(request, None))
            return error_response(with_request_id(error))

    return answer


def created_at(when: str | None) -> str:
    """A model's time in RFC 3339, UTC: when the upstream last changed it, else the epoch
    (also for Go's zero time, which Ollama writes for a time it does not know)."""
    if when:
        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            return EPOCH
        if moment.tzinfo is not None and moment.year >= 1970:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return EPOCH


def model_of(info: ModelInfo) -> AnthropicModel:
    return AnthropicModel(
        id=info.name,
        display_name=info.name,
        created_at=created_at(info.modified_at),
        max_input_tokens=info.context_length,
    )


def _query(request: Request) -> tuple[ModelsQuery, list[str]]:
    """The paging parameters, and the lifecycles asked for (the SDK sends `lifecycle[]`)."""
    params: dict[str, str] = {}
    lifecycles: list[str] = []
    for key, value in request.query_params.multi_items():
        if key in ("lifecycle", "lifecycle[]"):
            if value not in LIFECYCLES:
                raise bad(f"lifecycle: {value!r} is not one of {', '.join(LIFECYCLES)}")
            lifecycles.append(value)
        elif key in params:
            raise bad(f"{key}: the query parameter is given more than once")
        else:
            params[key] = value
    try:
        query = msgspec.convert(params, ModelsQuery, strict=False)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$.")
        raise bad(f"{where.rstrip('`')}: {message}") from None
    for key in ("after_id", "before_id"):
        # Lax conversion reads "null" as None; a parameter that is given is never None.
        if key in params and getattr(query, key) is None:
            raise bad(f"{key}: {params[key]!r} is not a model id")
    if query.after_id is not None and query.before_id is not None:
        raise bad("after_id and before_id: give one of them at most")
    return query, lifecycles


def _index(models: list[ModelInfo], cursor: str, param: str) -> int:
    for n, info in enumerate(models):
        if info.name == cursor:
            return n
    raise bad(f"{param}: {cursor!r} is not a model of this list")


def page(models: list[ModelInfo], query: ModelsQuery) -> AnthropicModelList:
    """The page `query` asks for, as Anthropic pages: `has_more` says whether more lie
    beyond it in the direction of travel (before `first_id` when paging with `before_id`)."""
    limit = query.limit
    if query.before_id is not None:
        end = _index(models, query.before_id, "before_id")
        start = max(0, end - limit)
        has_more = start > 0
    else:
        start = 0 if query.after_id is None else _index(models, query.after_id, "after_id") + 1
        end = start + limit
        has_more = end < len(models)
    data = [model_of(info) for info in models[start:end]]
    return AnthropicModelList(
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def _headers() -> dict[str, str]:
    """The request's id as `request-id` too, where the Anthropic SDKs look for it."""
    info = request_id.current.get()
    return {"request-id": info.id} if info is not None else {}


@in_anthropics_shape
async def models(request: Request) -> Response:
    check_version(request)
    query, lifecycles = _query(request)
    listed = await visible_models(request, credentials_from(request, None))
    # Every model the gateway lists is `active`.
    if lifecycles and "active" not in lifecycles:
        listed = []
    return JSON(page(listed, query), headers=_headers())


@in_anthropics_shape
async def model(request: Request) -> Response:
    check_version(request)
    name = request.path_params["model"]
    try:
        name = msgspec.convert(name, ModelName)
    except msgspec.ValidationError:
        raise bad(f"model_id: {name!r} is not a model name") from None
    shown = await visible_model(request, credentials_from(request, None), name)
    # What show() says, with the listing's name (show() may give none).
    return JSON(model_of(msgspec.structs.replace(shown, name=name)), headers=_headers())
