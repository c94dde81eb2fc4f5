"""What every route shares: the JSON response, error responses, decoding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

import requestlog
from errors import ApiError, api_error, error_body

if TYPE_CHECKING:
    from service import Gateway

T = TypeVar("T")

encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


class JSON(Response):
    """A response rendered by the shared msgspec encoder."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encoder.encode(content)


def error_response(error: ApiError) -> JSON:
    if error.request_id is None and (info := requestlog.current.get()) is not None:
        error.request_id = info.id
    headers = dict(error.headers)
    if error.request_id:
        headers["X-Request-Id"] = error.request_id
    return JSON(error_body(error), status_code=error.status, headers=headers)


def gateway_of(request: Request) -> Gateway:
    """The app's Gateway, put in the request state by the lifespan."""
    gateway: Gateway = request.state.gateway
    return gateway


async def decode_body(request: Request, kind: type[T]) -> T:
    """Decode a JSON body into a struct: 400 if it isn't JSON, 422 if it's the wrong JSON."""
    try:
        body = await request.body()
    except ClientDisconnect:
        # The client left before sending its body: nobody will read this answer.
        raise ApiError(499, "client_gone", "the client closed the connection mid-request") from None
    if not body.strip():
        raise ApiError(400, "invalid_json", "the body is empty; send a JSON object")
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise api_error(exc) from exc


def decode_query(request: Request, kind: type[T]) -> T:
    """Decode query parameters into a struct, converting strings as needed (422 on failure)."""
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key in params:
            raise ApiError(
                422, "invalid_request", f"query parameter `{key}` is given more than once"
            )
        params[key] = value
    try:
        decoded = msgspec.convert(params, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise api_error(exc) from exc
    for key in params:
        # Lax conversion reads "null" as None; a parameter that is given is never None.
        if getattr(decoded, key, "") is None:
            raise ApiError(
                422, "invalid_request", f"query parameter `{key}` cannot be {params[key]!r}"
            )
    return decoded
