"""/api/v1/admin/keys: create, list, label, limit and revoke callers' API keys.

A key is shown once, when it is made; the gateway keeps only its hash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from access.keys import ApiKey, KeyLimits, KeyPriority, Weight
from calls.errors import CallError as ApiError
from calls.types import ModelName

from .common import JSON, decode_body, gateway_of
from .openapi import ADMIN, UNAUTHORIZED, Operation, Paths, Reply, error

# No control characters: a label is shown in the dashboard, in exports and in log lines,
# where a newline or NUL would forge or cut a line.
Label = Annotated[str, Meta(min_length=1, max_length=100, pattern="^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
# A key names the models it may use, one by one; no sane key needs more.
MAX_MODELS = 256
Models = Annotated[list[ModelName], Meta(max_length=MAX_MODELS)]
Project = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern="^[^\\x00-\\x1f\\x7f-\\x9f]*$",
        description="The project this key's calls are accounted to when a call names none.",
    ),
]


class KeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    label: Label
    models: Models | None = None
    limits: KeyLimits = msgspec.field(default_factory=KeyLimits)
    project: Project | None = None
    priority: KeyPriority = "interactive"
    weight: Weight = 1.0


class KeyUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    label: Label | None = None
    # Absent: unchanged; null: every model.
    models: Models | msgspec.UnsetType | None = msgspec.UNSET
    limits: KeyLimits | None = None
    # Absent: unchanged; null: no default project.
    project: Project | msgspec.UnsetType | None = msgspec.UNSET
    priority: KeyPriority | None = None
    weight: Weight | None = None


class KeyView(msgspec.Struct, kw_only=True):
    """A key as the admin sees it: everything but the key."""

    id: str
    label: str
    fingerprint: str
    created: str
    revoked: str | None
    models: list[str] | None
    limits: KeyLimits
    project: str | None = None
    priority: str = "interactive"
    weight: float = 1.0

    @classmethod
    def of(cls, key: ApiKey) -> KeyView:
        return cls(
            id=key.id,
            label=key.label,
            fingerprint=key.fingerprint,
            created=key.created,
            revoked=key.revoked,
            models=key.models,
            limits=key.limits,
            project=key.project,
            priority=key.priority,
            weight=key.weight,
        )


class NewKey(msgspec.Struct, kw_only=True):
    key: str  # shown this once
    info: KeyView


def _find(request: Request) -> ApiKey:
    key = gateway_of(request).access.keys.get(request.path_params["key_id"])
    if key is None:
        raise ApiError(404, "key_not_found", "no API key has that id")
    return key


def _live(request: Request, doing: str) -> ApiKey:
    """The key, if it is not revoked: a revoked key stays as it was revoked, for good."""
    key = _find(request)
    if key.revoked is not None:
        raise ApiError(
            409,
            "key_revoked",
            f"cannot {doing}: the key was revoked at {key.revoked}, and a revoked key "
            "stays revoked; make a new key instead",
        )
    return key


async def list_keys(request: Request) -> Response:
    return JSON([KeyView.of(key) for key in gateway_of(request).access.keys.all()])


async def create_key(request: Request) -> Response:
    body = await decode_body(request, KeyCreate)
    key, plain = await gateway_of(request).access.keys.create(
        body.label,
        body.models,
        body.limits,
        project=body.project,
        priority=body.priority,
        weight=body.weight,
    )
    return JSON(NewKey(key=plain, info=KeyView.of(key)), status_code=201)


async def update_key(request: Request) -> Response:
    body = await decode_body(request, KeyUpdate)
    # Read after the body, so that a revocation made meanwhile is seen; and a revoked key
    # stays revoked whatever an update says (Keys.update), against one made elsewhere.
    key = _live(request, "change it")
    changed = msgspec.structs.replace(
        key,
        label=body.label if body.label is not None else key.label,
        models=key.models if body.models is msgspec.UNSET else body.models,
        limits=body.limits if body.limits is not None else key.limits,
        project=key.project if body.project is msgspec.UNSET else body.project,
        priority=body.priority if body.priority is not None else key.priority,
        weight=body.weight if body.weight is not None else key.weight,
    )
    await gateway_of(request).access.keys.update(changed)
    return JSON(KeyView.of(changed))


async def revoke_key(request: Request) -> Response:
    key = _live(request, "revoke it again")
    key = msgspec.structs.replace(key, revoked=datetime.now(UTC).isoformat())
    await gateway_of(request).access.keys.update(key)
    return JSON(KeyView.of(key))


routes = [
    Route("/api/v1/admin/keys", list_keys, methods=["GET"]),
    Route("/api/v1/admin/keys", create_key, methods=["POST"]),
    Route("/api/v1/admin/keys/{key_id}", update_key, methods=["PATCH"]),
    Route("/api/v1/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
]


_KEY_ID = {"key_id": "The key's public id (`info.id` when it was made)."}
_NOT_FOUND = error("No API key has that id (`key_not_found`).")
_REVOKED = error("The key is revoked, and a revoked key stays as it is (`key_revoked`).")
_BAD = {
    400: error("The body is not JSON (`invalid_json`)."),
    422: error("The JSON is not valid here (`invalid_request`); the message names the field."),
}

openapi: Paths = {
    "/api/v1/admin/keys": {
        "GET": Operation(
            summary="List the API keys (never the keys themselves)",
            tag="keys",
            auth=ADMIN,
            replies={
                200: Reply(description="Every key, revoked ones too.", json=list[KeyView]),
                401: UNAUTHORIZED,
            },
        ),
        "POST": Operation(
            summary="Create an API key",
            tag="keys",
            description="The key is in this response only; the gateway keeps its hash. Once "
            "any key exists, asking needs one.",
            body=KeyCreate,
            auth=ADMIN,
            replies={
                201: Reply(description="The new key, shown once.", json=NewKey),
                401: UNAUTHORIZED,
                **_BAD,
            },
        ),
    },
    "/api/v1/admin/keys/{key_id}": {
        "PATCH": Operation(
            summary="Change a key's label, models, limits, project, class or weight",
            tag="keys",
            path=_KEY_ID,
            body=KeyUpdate,
            auth=ADMIN,
            replies={
                200: Reply(description="The key as it is now.", json=KeyView),
                401: UNAUTHORIZED,
                404: _NOT_FOUND,
                409: _REVOKED,
                **_BAD,
            },
        ),
        "DELETE": Operation(
            summary="Revoke a key",
            tag="keys",
            path=_KEY_ID,
            auth=ADMIN,
            replies={
                200: Reply(description="The revoked key.", json=KeyView),
                401: UNAUTHORIZED,
                404: _NOT_FOUND,
                409: _REVOKED,
            },
        ),
    },
}
