"""/health: is the gateway up, does Ollama answer, does the usage store write, are the
limits counted where they should be."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from access.limits import CountersHealth
from calls.upstream import UpstreamHealth

from .common import JSON, gateway_of
from .openapi import Operation, Paths, Reply


class OllamaHealth(msgspec.Struct, kw_only=True):
    status: str  # "up" or "down"
    address: str
    version: str | None = None
    error: str | None = None


class StoreHealthReply(msgspec.Struct, kw_only=True):
    status: str
    pending: int
    error: str | None = None
    # Usage files found damaged since the gateway started; `error` says what became of them.
    damaged: list[str] = msgspec.field(default_factory=list)


class Health(msgspec.Struct, kw_only=True):
    status: str  # "ok" when every upstream answers and the store writes, else "degraded"
    gateway: str
    version: str
    # The (first) upstream, in the shape /health has always had.
    ollama: OllamaHealth
    store: StoreHealthReply
    # Every upstream: its state, calls in flight and models.
    upstreams: list[UpstreamHealth] = msgspec.field(default_factory=list)
    # Where limits and stream tickets are counted (--redis), and whether that works.
    limits: CountersHealth = msgspec.field(default_factory=CountersHealth)


async def health(request: Request) -> Response:
    gateway = gateway_of(request)
    # Each upstream bounds its own probe, so /health answers quickly even when one hangs.
    upstreams = await gateway.upstream.health()
    first = upstreams[0]
    ollama = OllamaHealth(
        status=first.status, address=first.address, version=first.version, error=first.error
    )
    store = gateway.store.health()
    limits = gateway.limits.health()
    ok = all(u.status == "up" for u in upstreams) and store.status == limits.status == "ok"
    return JSON(
        Health(
            status="ok" if ok else "degraded",
            gateway="up",
            version=request.app.state.version,
            ollama=ollama,
            store=StoreHealthReply(
                status=store.status, pending=store.pending, error=store.error, damaged=store.damaged
            ),
            upstreams=upstreams,
            limits=limits,
        )
    )


routes = [Route("/health", health, methods=["GET"])]


openapi: Paths = {
    "/health": {
        "GET": Operation(
            summary="Is the gateway up, does Ollama answer, does the store write",
            tag="operations",
            description="Always 200 while the gateway runs: `status` is `ok` when Ollama "
            "answers, the usage store writes and the shared limits (--redis) are reachable, "
            "`degraded` otherwise (see `ollama.status`, `store.status` and `limits.status`). "
            "`limits.local_admissions` counts the admissions this gateway decided by its own "
            "counts because the shared store failed.",
            replies={200: Reply(description="The gateway's health.", json=Health)},
        )
    }
}
