"""/api/v1/admin/queue: the fair queue now, per upstream and model (queueing/view.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from queueing.view import QueueView

from .common import JSON
from .openapi import ADMIN, UNAUTHORIZED, Operation, Paths, Reply

# An upstream that is not a router (one given to create_app in a test) has no queue.
_EMPTY = QueueView(order="none", shared="local", queues=[])


async def queue(request: Request) -> Response:
    view: Callable[[], Awaitable[QueueView]] | None = getattr(request.app.state, "queue", None)
    # No caching: it changes with every call that starts or ends.
    now = await view() if view is not None else _EMPTY
    return JSON(now, headers={"Cache-Control": "no-store"})


routes = [Route("/api/v1/admin/queue", queue, methods=["GET"])]

openapi: Paths = {
    "/api/v1/admin/queue": {
        "GET": Operation(
            summary="The fair queue now",
            tag="admin",
            description="Per upstream and model: the calls running (key label, project, "
            "class, seconds waited and running) and the calls waiting for a slot, in the "
            "order they would be served. A call that could go to several upstreams is listed "
            "under each.",
            auth=ADMIN,
            replies={
                200: Reply(description="Running and waiting calls.", json=QueueView),
                401: UNAUTHORIZED,
            },
        )
    },
}
