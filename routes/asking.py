"""A front's side of the one pipeline call (calls/pipeline.py): the `Ask` a request makes, and
a whole result that ends early when the client hangs up. Streams: routes/streaming.py.

    call = await gateway_of(request).call(ask_of(request, FRONT, neutral, stream=...))
    finished = await whole(request, call.answer())       # or stream_response(...)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from access.guard import SESSION_COOKIE
from access.identity import Caller, Credentials, check_model
from calls.errors import CallError
from calls.pipeline import Ask, Call, Q
from calls.types import Labels, ModelInfo
from queueing import Place, Priority, priority_of
from queueing.place import PriorityError

from . import request_id
from .common import gateway_of

T = TypeVar("T")


def credentials_of(
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
_NO_LABELS = Labels()


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


PRIORITY_HEADER = {
    "X-Priority": "`batch` lowers the call's class in the fair queue below its key's own "
    "(`interactive` asks for no more than the key has); any other value is refused (400)."
}


def queue_headers(place: Place | None) -> dict[str, str]:
    """What a response tells of a call's queueing, where a header can: the class it was
    served at (when the caller asked for one: a class above its key's is not given), and its
    place in line when the response starts while it still waits."""
    if place is None:
        return {}
    headers: dict[str, str] = {}
    if place.asked is not None:
        headers["X-Priority"] = place.priority
    standing = place.standing()
    if standing is not None:
        headers["X-Queue-Position"] = str(standing[0])
    return headers


def answer_headers(call: Call[Any]) -> dict[str, str]:
    """A whole answer's headers: its id, and the class it was served at when the caller asked
    for one. (Its wait for a slot is in the Server-Timing every response gets: routes/timing.)"""
    headers = {"X-Request-Id": call.id}
    place = call.place
    if place is not None and place.asked is not None:
        headers["X-Priority"] = place.priority
    return headers


def ask_of(
    request: Request,
    front: str,
    neutral: Q,
    *,
    stream: bool = False,
    credentials: Credentials | None = None,
    labels: Labels | None = None,
) -> Ask[Q]:
    """The Ask this request makes: `neutral` asked by whoever the request's credentials say
    (a front with credentials of its own passes them), accounted to its labels (by default
    the X-Project headers), under the request's id (so header, log line and record agree),
    the front's name and the path it came in by."""
    info = request_id.current.get()
    trace, priority = _trace_and_priority(request.scope["headers"])
    return Ask(
        request=neutral,
        credentials=credentials_of(request) if credentials is None else credentials,
        labels=labels_of(request) if labels is None else labels,
        stream=stream,
        id=info.id if info is not None else request_id.new_id(),
        front=front,
        # The scope's path, not request.url.path: building the URL object cost 8 µs an ask.
        endpoint=request.scope["path"],
        priority=None if priority is None else _priority(priority),
        trace=trace,
    )


def _trace_and_priority(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The caller's W3C trace context (for --otlp) and its X-Priority header, each the first
    one sent, None if absent. One loop over the raw headers (the server gives their names in
    lower case): Starlette's Headers cost five times as much, on every call."""
    trace = priority = None
    for name, value in headers:
        if name == b"traceparent":
            if trace is None:
                trace = value.decode("latin-1")
        elif name == b"x-priority" and priority is None:
            priority = value.decode("latin-1")
    return trace, priority


def _priority(header: str) -> Priority:
    """The class an X-Priority header's value asks for; CallError 400 for one that is no
    class."""
    try:
        asked = priority_of(header)
    except PriorityError as exc:
        raise CallError(400, "invalid_priority", str(exc)) from None
    assert asked is not None
    return asked


def allowed(caller: Caller, model: str) -> bool:
    """Whether the caller's key lets it see and use `model` (every model without a key)."""
    return caller.key is None or caller.key.allows(model)


async def visible_models(request: Request, credentials: Credentials) -> list[ModelInfo]:
    """The models a caller may see, in the upstream's order: its key's, or every model
    (CallError 401 without a valid key, once keys exist). Every front's listing is this one."""
    gateway = gateway_of(request)
    caller = await gateway.identify(credentials)
    return [m for m in await gateway.models() if allowed(caller, m.name)]


async def visible_model(request: Request, credentials: Credentials, name: str) -> ModelInfo:
    """What the upstream says of one model, if the caller may see it (CallError 401 or 403;
    the upstream's 404 if none has it)."""
    gateway = gateway_of(request)
    check_model(await gateway.identify(credentials), name)
    return await gateway.show(name)


# How long a whole answer runs before a task starts watching for its client's hang-up.
WATCH_AFTER = 0.05


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def whole(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` (a call's answer() or embeddings()), but cancel it if the client hangs up
    first: the upstream request is closed, the call recorded as cancelled, and this raises
    CallError 499 for a client that is no longer there.

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
            raise CallError(
                499, "client_gone", "the client closed the connection before the answer"
            ) from None
        raise
    finally:
        running = False
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
