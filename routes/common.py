"""What every route shares: the JSON response, the gateway's error shape, decoding, and the
steps every front takes around a call (credentials, the call's id, a client that hangs up)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from access.guard import SESSION_COOKIE
from access.identity import Caller, Credentials
from calls.errors import CallError, call_error
from calls.pipeline import CallInfo
from calls.types import Labels

from . import request_id
from .schemas import ErrorBody, ErrorDetail

if TYPE_CHECKING:
    from calls.pipeline import CallStream, Gateway

T = TypeVar("T")

encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


class JSON(Response):
    """A response rendered by the shared msgspec encoder."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encoder.encode(content)


def error_body(error: CallError) -> ErrorBody:
    return ErrorBody(
        ErrorDetail(
            status=error.status, code=error.code, message=error.message, request_id=error.request_id
        )
    )


def with_request_id(error: CallError) -> CallError:
    """The error, naming the request it ended (the id of its record, for an ask)."""
    if error.request_id is None and (info := request_id.current.get()) is not None:
        error.request_id = info.id
    return error


def error_response(error: CallError) -> JSON:
    """The gateway's own error shape: the seed's API and the admin API."""
    with_request_id(error)
    headers = dict(error.headers)
    if error.request_id:
        headers["X-Request-Id"] = error.request_id
    return JSON(error_body(error), status_code=error.status, headers=headers)


def gateway_of(request: Request) -> Gateway:
    """The app's Gateway, put in the app's state by the lifespan."""
    gateway: Gateway = request.app.state.gateway
    return gateway


def call_info(request: Request, front: str) -> CallInfo:
    """A call's identity: the request's id (so header, log line and record agree), the front,
    and the path it came in by."""
    info = request_id.current.get()
    call_id = info.id if info is not None else request_id.new_id()
    # The scope's path, not request.url.path: building the URL object cost 8 µs an ask.
    return CallInfo(id=call_id, front=front, endpoint=request.scope["path"])


def credentials(
    request: Request, *, ticket: str | None = None, user_key: str | None = None
) -> Credentials:
    """What the request brought to prove who it is: a Bearer token, the admin cookie, a
    stream ticket, or the seed's user_key."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return Credentials(
        bearer=bearer,
        session=request.cookies.get(SESSION_COOKIE),
        ticket=ticket,
        user_key=user_key,
    )


# The accounting labels of the fronts whose bodies have no place for them, as headers.
LABEL_HEADERS = {
    "X-Project": "The project this call is accounted to (default: the API key's project).",
    "X-Process-Id": "The process this call is accounted to.",
    "X-Subprocess-Id": "The subprocess this call is accounted to.",
}
MAX_LABEL = 200


def _label(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_LABEL:
        raise CallError(
            400,
            "invalid_request",
            f"the {name} header has {len(value)} characters; the limit is {MAX_LABEL}",
        )
    return value or None


def labels_of(request: Request) -> Labels:
    """The accounting labels from the X-Project, X-Process-Id and X-Subprocess-Id headers."""
    headers = request.headers
    if (
        "x-project" not in headers
        and "x-process-id" not in headers
        and ("x-subprocess-id" not in headers)
    ):
        return _NO_LABELS
    return Labels(
        project=_label(request, "X-Project"),
        process_id=_label(request, "X-Process-Id"),
        subprocess_id=_label(request, "X-Subprocess-Id"),
    )


_NO_LABELS = Labels()


def allowed(caller: Caller, model: str) -> bool:
    """Whether the caller's key lets it see and use `model` (every model without a key)."""
    return caller.key is None or caller.key.allows(model)


async def opened(request: Request, stream: CallStream) -> CallStream:
    """The stream, once its upstream accepted it or --open-wait passed: a failure noticed by
    then keeps its HTTP status (CallError, the call recorded and closed)."""
    try:
        await stream.wait_open(request.app.state.settings.open_wait)
    except BaseException:
        await stream.aclose()
        raise
    return stream


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


# How long a whole answer runs before a task starts watching for its client's hang-up.
WATCH_AFTER = 0.05


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work`, but cancel it if the client hangs up first (so the upstream stops too);
    None if it did.

    The work runs in this task. The watcher (a task waiting on `receive()`) starts only once
    the work has taken WATCH_AFTER seconds: most whole answers from a warm model take longer,
    but a call that ends sooner never pays for a task of its own (a tenth of a fast ask's
    cost). A hang-up is then noticed WATCH_AFTER seconds late at most.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    running = True
    left = False
    watcher: asyncio.Task[None] | None = None

    def on_watcher_done(done: asyncio.Future[None]) -> None:
        nonlocal left
        if done.cancelled() or done.exception() is not None or not running:
            return
        left = True
        task.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(_disconnected(request.receive))
        watcher.add_done_callback(on_watcher_done)

    timer = loop.call_later(WATCH_AFTER, watch)
    try:
        return await work
    except asyncio.CancelledError:
        # Only our own cancel becomes "the client left"; a shutdown's cancel propagates.
        if left and task.uncancel() == 0:
            return None
        raise
    finally:
        running = False
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
