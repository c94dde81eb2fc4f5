"""The OpenAPI document, built from the routes' own descriptions and the msgspec schemas.

Each routes module exports an `openapi` mapping next to its `routes` list:
`{path: {method: Operation}}`. `document` gathers those, asks msgspec for the JSON
Schema of every struct they name (one call, so shared structs become one component),
and writes OpenAPI 3.1. Nothing in the document is written by hand except prose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .errors import ErrorBody

REF = "#/components/schemas/{name}"

# Every response carries it (see app.RequestIds); documented once here.
REQUEST_ID = (
    "X-Request-Id",
    "This request's id. For an ask it is also the id of its usage record.",
)


@dataclass(frozen=True, kw_only=True)
class Reply:
    """One response of an operation; a body in each media type given (none: no body)."""

    description: str
    # A type msgspec knows, whose schema is the JSON body's; or a tuple of them, for an
    # operation that answers in either of two APIs' shapes (routes/models.py).
    json: Any = None
    # Media type(s) of a text body, e.g. "text/plain" or ("text/html", "text/plain").
    text: str | tuple[str, ...] | None = None
    # SSE: event name -> type of its JSON data (or a tuple of the types it may be); "" for
    # events sent without a name (`data:` only, as OpenAI's chunks are).
    events: Mapping[str, Any] | None = None
    # SSE: the data of a last event that is not JSON (OpenAI's `[DONE]`).
    last_data: str | None = None
    # SSE: whether each named event has an `id` (the seed's do; Anthropic's and OpenAI's
    # Responses' do not), and the names of those that may come without one all the same
    # (the seed's `error` for a resume that cannot be served).
    event_ids: bool = True
    unnumbered: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description


@dataclass(frozen=True, kw_only=True)
class Header:
    """A request header that is required, or takes only some values (a plain description
    documents an optional header of any value)."""

    description: str
    required: bool = False
    enum: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Operation:
    summary: str
    tag: str
    replies: Mapping[int, Reply]
    description: str = ""
    query: Any = None  # a Struct whose fields are the query parameters
    body: Any = None  # the type of a JSON request body
    # request headers -> a description, or a Header
    headers: Mapping[str, str | Header] = field(default_factory=dict)
    path: Mapping[str, str] = field(default_factory=dict)  # path parameters -> description
    # Who may call it: ADMIN (the admin token or its cookie), CALLER (an API key once keys
    # exist, or the admin), or nobody in particular (empty).
    auth: tuple[str, ...] = ()


ADMIN = ("adminToken", "adminCookie")
CALLER = ("apiKey", "adminToken", "adminCookie", "anonymous")
SECURITY_SCHEMES = {
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token, shown once when the gateway first starts.",
    },
    "adminCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "ohost_admin",
        "description": "Set when the page is opened with `?token=<admin token>`.",
    },
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "A caller's API key (also accepted as the body's `user_key`). "
        "Required to ask once any key exists.",
    },
    "xApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "A caller's API key, as the Anthropic SDKs send it (Anthropic's front).",
    },
}


def error(description: str, *, retry: bool = False, shape: Any = ErrorBody) -> Reply:
    """A response carrying an error: the gateway's own shape, or a front's (`shape`)."""
    headers = {"Retry-After": "Seconds to wait before trying again."} if retry else {}
    return Reply(description=description, json=shape, headers=headers)


Paths = Mapping[str, Mapping[str, Operation]]


def either(
    first: Operation,
    second: Operation,
    *,
    summary: str,
    tag: str,
    header: str,
    about: str | Header,
) -> Operation:
    """One operation answered in two APIs' shapes, the second's when the request carries
    `header`: each reply a status of either (both shapes where both have it), the
    parameters and callers of both."""
    replies: dict[int, Reply] = {}
    for status in sorted({*first.replies, *second.replies}):
        one, other = first.replies.get(status), second.replies.get(status)
        if one is None or other is None:
            only = one or other
            assert only is not None
            replies[status] = only
            continue
        replies[status] = Reply(
            description=f"{one.description} With `{header}`: {other.description}",
            json=(one.json, other.json),
            headers={**one.headers, **other.headers},
        )
    return Operation(
        summary=summary,
        tag=tag,
        replies=replies,
        description=" ".join(d for d in (first.description, second.description) if d),
        query=first.query if first.query is not None else second.query,
        # The second's own description of `header` (required, there) gives way to `about`.
        headers={**first.headers, **second.headers, header: about},
        path={**first.path, **second.path},
        auth=tuple(dict.fromkeys((*second.auth, *first.auth))),
    )


UNAUTHORIZED = error("No valid admin token, API key or ticket (`unauthorized`).")


def document(
    descriptions: Iterable[Paths], *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every operation in `descriptions`."""
    paths: dict[str, dict[str, Operation]] = {}
    for described in descriptions:
        for path, methods in described.items():
            for method, op in methods.items():
                paths.setdefault(path, {})[method.lower()] = op

    # Every type named anywhere, in a stable order, for one schema_components call.
    types: list[Any] = []
    queries: list[Any] = []
    for methods in paths.values():
        for op in methods.values():
            queries += [op.query] if op.query is not None else []
            types += [op.body] if op.body is not None else []
            for reply in op.replies.values():
                if isinstance(reply.json, tuple):
                    types += list(reply.json)
                elif reply.json is not None:
                    types.append(reply.json)
                for kinds in (reply.events or {}).values():
                    types += list(kinds) if isinstance(kinds, tuple) else [kinds]
    unique = list(dict.fromkeys(types + queries))
    schemas, components = msgspec.json.schema_components(unique, ref_template=REF)
    schema_of = dict(zip(unique, schemas, strict=True))

    def query_parameters(kind: Any) -> list[dict[str, Any]]:
        struct = components[schema_of[kind]["$ref"].rsplit("/", 1)[1]]
        required = set(struct.get("required", ()))
        return [
            _parameter(name, "query", prop, required=name in required)
            for name, prop in struct["properties"].items()
        ]

    def media(reply: Reply) -> dict[str, Any]:
        content: dict[str, Any] = {}
        texts = (reply.text,) if isinstance(reply.text, str) else reply.text or ()
        for text in texts:
            content[text] = {"schema": {"type": "string"}}
        if isinstance(reply.json, tuple):
            # The shapes may overlap (an Anthropic error is also an object with an `error`):
            # any one of them, not exactly one.
            content["application/json"] = {"schema": {"anyOf": [schema_of[t] for t in reply.json]}}
        elif reply.json is not None:
            content["application/json"] = {"schema": schema_of[reply.json]}
        if reply.events is not None:
            content["text/event-stream"] = _event_stream(
                reply.events,
                schema_of,
                reply.last_data,
                ids=reply.event_ids,
                unnumbered=reply.unnumbered,
            )
        return content

    out_paths: dict[str, Any] = {}
    for path, methods in paths.items():
        out_methods: dict[str, Any] = {}
        for method, op in methods.items():
            item: dict[str, Any] = {"tags": [op.tag], "summary": op.summary}
            if op.description:
                item["description"] = op.description
            item["operationId"] = _operation_id(method, path)
            parameters = [
                _parameter(name, "path", {"type": "string", "description": text}, required=True)
                for name, text in op.path.items()
            ]
            parameters += [_header(name, about) for name, about in op.headers.items()]
            if op.query is not None:
                parameters += query_parameters(op.query)
            if parameters:
                item["parameters"] = parameters
            if op.body is not None:
                item["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": schema_of[op.body]}},
                }
            responses: dict[str, Any] = {}
            for status, reply in sorted(op.replies.items()):
                response: dict[str, Any] = {"description": reply.description}
                headers = {REQUEST_ID[0]: REQUEST_ID[1], **reply.headers}
                response["headers"] = {
                    name: {"description": text, "schema": {"type": "string"}}
                    for name, text in headers.items()
                }
                content = media(reply)
                if content:
                    response["content"] = content
                responses[str(status)] = response
            item["responses"] = responses
            if op.auth:
                # `anonymous`: asking is open while no API key exists.
                item["security"] = [{} if name == "anonymous" else {name: []} for name in op.auth]
            out_methods[method] = item
        out_paths[path] = out_methods

    # A struct used only as query parameters is spelled out there, not a component.
    for kind in set(queries) - set(types):
        components.pop(schema_of[kind]["$ref"].rsplit("/", 1)[1])
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": out_paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


def _operation_id(method: str, path: str) -> str:
    words = [w for w in path.replace("{", "").replace("}", "").split("/") if w]
    return "_".join([method, *(w.replace(".", "_") for w in words)]) if words else method + "_root"


def _header(name: str, about: str | Header) -> dict[str, Any]:
    if isinstance(about, str):
        return _parameter(name, "header", {"type": "string", "description": about})
    schema: dict[str, Any] = {"type": "string", "description": about.description}
    if about.enum is not None:
        schema["enum"] = list(about.enum)
    return _parameter(name, "header", schema, required=about.required)


def _parameter(
    name: str, where: str, schema: dict[str, Any], *, required: bool = False
) -> dict[str, Any]:
    """A parameter from a struct field's schema; an absent parameter is the field's None."""
    schema = dict(schema)
    branches = schema.pop("anyOf", None)
    if branches is not None:
        # A query string cannot say null: `str | None` is just an optional string.
        kept = [b for b in branches if b != {"type": "null"}]
        schema = {**(kept[0] if len(kept) == 1 else {"anyOf": kept}), **schema}
    if schema.get("default", 0) is None:
        del schema["default"]
    parameter: dict[str, Any] = {"name": name, "in": where, "required": required}
    description = schema.pop("description", None)
    if description:
        parameter["description"] = description
    parameter["schema"] = schema
    return parameter


def _event_stream(
    events: Mapping[str, Any],
    schema_of: Mapping[Any, Any],
    last_data: str | None = None,
    *,
    ids: bool = True,
    unnumbered: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A Server-Sent Events body, described one event at a time.

    As OpenAPI 3.2 does with `itemSchema` (and 3.1 tools read `schema` for SSE): each
    event is an object with its `event` name, its `id`, and its `data`, a JSON text
    whose shape `contentSchema` gives.
    """
    variants: list[dict[str, Any]] = []
    for name, kinds in events.items():
        for kind in kinds if isinstance(kinds, tuple) else (kinds,):
            variants.append(
                _event_variant(name, schema_of[kind], ids=ids, id_optional=name in unnumbered)
            )
    if last_data is not None:
        variants.append(
            {
                "title": "last event",
                "type": "object",
                "properties": {"data": {"const": last_data}},
                "required": ["data"],
            }
        )
    if all(events):
        names = ", ".join(f"`{name}`" for name in events)
        about = (
            f"One Server-Sent Event ({names}). Each has "
            + ("an `id`, " if ids else "")
            + "an `event` name and one `data` line of JSON; lines starting with `:` are "
            "keep-alive comments."
        )
    else:
        about = (
            "One Server-Sent Event: a `data` line of JSON, without a name or an id"
            + (f", and last `data: {last_data}`" if last_data is not None else "")
            + "; lines starting with `:` are keep-alive comments."
        )
    # Data-only events tell their kinds apart only by their JSON, which a validator may not
    # decode: any one of them must match, not exactly one.
    return {"schema": {"description": about, "oneOf" if all(events) else "anyOf": variants}}


def _event_variant(
    name: str, schema: dict[str, Any], *, ids: bool = True, id_optional: bool = False
) -> dict[str, Any]:
    """One kind of event: named, with an id (the seed's) or without (Anthropic's, OpenAI's
    Responses'), or only `data` (OpenAI's chat chunks)."""
    data = {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}
    if not name:
        return {
            "title": "data event",
            "type": "object",
            "properties": {"data": data},
            "required": ["data"],
        }
    if not ids:
        return {
            "title": f"{name} event",
            "type": "object",
            "properties": {"event": {"const": name}, "data": data},
            "required": ["event", "data"],
        }
    return {
        "title": f"{name} event",
        "type": "object",
        "properties": {"event": {"const": name}, "id": {"type": "string"}, "data": data},
        "required": ["event", "data"] if id_optional else ["event", "id", "data"],
    }
