"""What every route shares: the JSON response, the app's Gateway, decoding bodies and
query strings into msgspec structs (400 for what is not JSON, 422 for the wrong JSON), and the
base64 check every front makes of images."""

from __future__ import annotations

from base64 import b64decode
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from calls.errors import CallError, call_error
from calls.pipeline import Gateway

T = TypeVar("T")

encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


class JSON(Response):
    """A response rendered by the shared msgspec encoder."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encoder.encode(content)


def is_base64(text: str) -> bool:
    """Whether an image sent as text is base64, as every upstream takes images."""
    try:
        b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        return False
    return True


def gateway_of(request: Request) -> Gateway:
    """The app's Gateway, put in the app's state by the lifespan."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def read_body(request: Request) -> bytes:
    """The whole body (the guard has bounded it); 499 if the client left mid-body."""
    try:
        return await request.body()
    except ClientDisconnect:
        # The client left before sending its body: nobody will read this answer.
        raise CallError(
            499, "client_gone", "the client closed the connection mid-request"
        ) from None


def decoder_for(kind: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder


async def decode_body(request: Request, kind: type[T]) -> T:
    """Decode a JSON body into a struct: 400 if it isn't JSON, 422 if it's the wrong JSON."""
    body = await read_body(request)
    if not body.strip():
        raise CallError(400, "invalid_json", "the body is empty; send a JSON object")
    try:
        return decoder_for(kind).decode(body)
    except msgspec.DecodeError as exc:
        raise call_error(exc) from exc


def decode_query(request: Request, kind: type[T]) -> T:
    """Decode query parameters into a struct, converting strings as needed (422 on failure)."""
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key in params:
            raise CallError(
                422, "invalid_request", f"query parameter `{key}` is given more than once"
            )
        params[key] = value
    try:
        decoded = msgspec.convert(params, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise call_error(exc) from exc
    for key in params:
        # Lax conversion reads "null" as None; a parameter that is given is never None.
        if getattr(decoded, key, "") is None:
            raise CallError(
                422, "invalid_request", f"query parameter `{key}` cannot be {params[key]!r}"
            )
    return decoded
