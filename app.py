"""Ollama Host: settings in, a Starlette app out, and the entry point.

python app.py --help

`create_app` builds the app from its parts: an upstream (`calls.upstream.Upstream`), a usage
store (`store.base.UsageStore`) and the access state; each defaults to what the settings
describe. A front is a package in `MODULES` (routes/seed/, routes/ollama/, routes/openai/,
routes/anthropic/), and a resource a module; each exports `routes` and `openapi`, and one that
answers errors in a shape of its own exports `PREFIX` and `error_response` too. One whose
clients' browsers use Ollama's default origins exports
`BROWSER_ORIGINS = access.origins.OLLAMA_DEFAULTS` (see origin_policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

import upstreams
from access.guard import Guard
from access.keys import Access
from access.limits import Limits
from access.origins import OriginPolicy, Origins, parse_patterns
from calls.errors import CallError, UpstreamError, call_error, internal
from calls.options import Pinned
from calls.pipeline import Gateway
from calls.upstream import Upstream
from ollama_host import __version__, program
from ollama_host.backends import open_access, open_shared, open_shared_queue
from ollama_host.requestlog import RequestLog
from ollama_host.settings import Settings
from routes import (
    admin,
    anthropic,
    docs,
    health,
    keys,
    metrics,
    models,
    ollama,
    openai,
    openapi,
    page,
    queue,
    request_id,
    residency,
    responses,
    seed,
)
from routes.common import encoder
from routes.dispatch import StaticFirstRouter
from routes.errors import error_response, with_request_id
from routes.resuming import Resumes
from routes.streaming import SERVER_SEND
from store import StoreError, UsageStore, open_store
from telemetry import open_metrics, open_tracing
from telemetry.multiproc import multiprocess
from telemetry.serving import serve_metrics

if TYPE_CHECKING:
    from telemetry.metrics import Metrics

# Each module exports `routes` and an `openapi` description of them.
# The router tries routes in this order, a regex each: the fronts first, the one with the
# fewest routes before the one with the most.
MODULES: tuple[ModuleType, ...] = (
    seed,
    anthropic,
    responses,
    openai,
    models,
    ollama,
    admin,
    residency,
    keys,
    queue,
    health,
    metrics,
    docs,
    page,
)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def renderer(modules: Sequence[ModuleType]) -> Callable[[str], Callable[[CallError], Response]]:
    """For a path, how its front renders an error: the front whose PREFIX is the longest
    match, else the gateway's own shape."""
    fronts = sorted(
        ((m.PREFIX, m.error_response) for m in modules if hasattr(m, "PREFIX")),
        key=lambda front: -len(front[0]),
    )

    @functools.lru_cache(maxsize=256)
    def render_for(path: str) -> Callable[[CallError], Response]:
        for prefix, render in fronts:
            if path == prefix.rstrip("/") or path.startswith(prefix):
                return render  # type: ignore[no-any-return]
        return error_response

    return render_for


def origin_policy(settings: Settings, modules: Sequence[ModuleType]) -> OriginPolicy:
    """Which origins may call which path: the settings' lists, and the origins each front
    declares (`BROWSER_ORIGINS` for its `PREFIX`, and for its `BROWSER_PATHS`)."""
    return OriginPolicy(
        listed=Origins(parse_patterns(settings.cors_origins, "--cors-origins")),
        admin=Origins(parse_patterns(settings.admin_origins, "--admin-origins")),
        fronts={
            m.PREFIX: Origins(getattr(m, "BROWSER_ORIGINS", ()))
            for m in modules
            if hasattr(m, "PREFIX")
        },
        paths={
            path: Origins(m.BROWSER_ORIGINS)
            for m in modules
            for path in getattr(m, "BROWSER_PATHS", ())
        },
    )


class GatewayApp(Starlette):
    """Starlette, plus the server's own `send` in each HTTP scope, for streamed bodies.

    The middleware here (Starlette's error and exception layers, RequestLog, Guard) wrap
    `send` only to see or change `http.response.start`; body messages pass through each
    unchanged. A stream sends a body message per token, so CallStreamResponse sends those to
    the server directly: three Python calls less per token, about 5% of what relaying a token
    costs (docs/performance.md). With any other middleware added, nothing is bypassed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The same routes and lifespan, found by a dict lookup where a path has no parameters.
        self.router = StaticFirstRouter(routes=kwargs["routes"], lifespan=kwargs["lifespan"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._bodies_untouched:
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)

    @functools.cached_property
    def _bodies_untouched(self) -> bool:
        known: tuple[object, ...] = (RequestLog, Guard)
        return all(m.cls in known for m in self.user_middleware)


def create_app(
    settings: Settings,
    *,
    upstream: Upstream | None = None,
    store: UsageStore | None = None,
    access: Access | None = None,
    modules: Sequence[ModuleType] = MODULES,
) -> GatewayApp:
    """The app. It owns what it is given: the upstream and the store are closed when it stops.

    The store opens (and the upstream is made) at startup unless given already.
    """
    if access is None:
        access, _ = open_access(settings.store, settings.data_path, settings.admin_token)
    render_for = renderer(modules)
    counted = open_metrics(settings)

    def respond(request: Request, error: CallError) -> Response:
        return render_for(request.url.path)(with_request_id(error))

    async def on_call_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CallError | UpstreamError)
        return respond(request, call_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = (
            f"no route {request.method} {request.url.path}"
            if exc.status_code in _HTTP_CODES
            else exc.detail
        )
        headers = dict(exc.headers or {})
        return respond(request, CallError(exc.status_code, code, message, headers=headers))

    async def on_store_error(request: Request, exc: Exception) -> Response:
        # A database store that cannot be reached for a read; asking goes on meanwhile.
        error = CallError(503, "store_unavailable", str(exc), headers={"Retry-After": "1"})
        return respond(request, error)

    async def on_crash(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback after this; the client gets no trace of it, only the
        # request id to find it by. This runs outside RequestLog, hence the scope's state.
        return respond(request, internal(getattr(request.state, "request_id", None)))

    def guard_render(path: str, error: CallError) -> tuple[bytes, bytes]:
        response = render_for(path)(with_request_id(error))
        return (response.media_type or "application/json").encode("latin-1"), bytes(response.body)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        usage = store or open_store(
            settings.store or settings.data_path, retention_days=settings.retention_days
        )
        shared = open_shared(settings.redis, access.scope) if settings.redis else None
        if shared is not None:
            await shared.check()
            access.tickets = shared
        try:
            up = upstream or upstreams.build(settings)
            if settings.redis and isinstance(up, upstreams.Router):
                # Caps and the fair queue shared by every gateway on this Redis.
                queue = open_shared_queue(settings.redis, access.scope)
                up.share(queue)
                await queue.check()
            try:
                gateway = Gateway(
                    up,
                    usage,
                    access,
                    Limits(settings, shared),
                    max_prompt=settings.max_prompt,
                    max_output=settings.max_record_output,
                    open_wait=settings.open_wait,
                    share_by=settings.fair_share,
                    pinned=Pinned.of(settings.model_options, settings.upstreams_file),
                )
                gateway.observers.append(request_id.note_record)
                gateway.starters.append(request_id.note_account)
                gateway.limits.observers.append(request_id.note_local_admission)
                # For the routes, and for GatewayServer.shutdown, which must reach it before
                # connections close.
                app.state.gateway = gateway
                app.state.queue = up.queue if isinstance(up, upstreams.Router) else None
                resumes = Resumes(window=settings.resume_window, buffer=settings.resume_buffer)
                app.state.resumes = resumes
                try:
                    async with _counting(app, gateway):
                        yield {}
                finally:
                    # Streams kept for a client that may come back: not to this process.
                    await resumes.aclose()
            finally:
                await up.aclose()
        finally:
            if shared is not None:
                await shared.aclose()
            await usage.aclose()
            access.close()

    @contextlib.asynccontextmanager
    async def _counting(app: Starlette, gateway: Gateway) -> AsyncIterator[None]:
        """The metrics watch the calls; their gauges are sampled each second; and, with
        --metrics-port, served there (by this process, unless it is one of --workers N,
        whose parent serves them for all). With --otlp, the traces watch them too."""
        tracing = open_tracing(settings, counted)
        if tracing is not None:
            gateway.watchers.append(tracing)
            with contextlib.suppress(UpstreamError, TimeoutError):
                async with asyncio.timeout(5):
                    tracing.addresses = {u.name: u.address for u in await gateway.upstream.health()}
        try:
            if counted is None:
                yield
            else:
                async with _sampled(app, gateway, counted):
                    yield
        finally:
            if tracing is not None:
                # Flushes what is queued; bounded by the exporter's own timeout.
                await asyncio.to_thread(tracing.close)

    @contextlib.asynccontextmanager
    async def _sampled(app: Starlette, gateway: Gateway, counted: Metrics) -> AsyncIterator[None]:
        gateway.watchers.append(counted)
        served = None
        if settings.metrics_port and getattr(app.state, "serves_metrics_port", True):
            served = serve_metrics(settings.metrics_port, counted.exposition)
        # A scrape of this process samples it as it comes; only numbers that something else
        # serves (the --metrics-port thread, or a worker's for another worker's scrape) need
        # sampling each second.
        sampler = None
        if served is not None or multiprocess():
            sampler = asyncio.ensure_future(counted.keep_sampling(gateway.upstream, gateway.store))
        try:
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            # A worker's last calls count too, after it is gone (its counters stay).
            counted.flush()
            if served is not None:
                served.close()

    app = GatewayApp(
        routes=[route for module in modules for route in module.routes],
        lifespan=lifespan,
        # RequestLog first, so that what the guard refuses is logged with an id too.
        middleware=[
            Middleware(RequestLog, content=settings.log_content),
            Middleware(
                Guard,
                render=guard_render,
                admin=access.admin,
                allowed_hosts=settings.host_list,
                origins=origin_policy(settings, modules),
                max_body=settings.max_body,
            ),
        ],
        exception_handlers={
            CallError: on_call_error,
            UpstreamError: on_call_error,
            HTTPException: on_http_error,
            StoreError: on_store_error,
            500: on_crash,
        },
    )
    app.state.settings = settings
    app.state.metrics = counted
    app.state.version = __version__
    app.state.openapi = openapi_json(tuple(modules))
    return app


@functools.cache
def openapi_json(modules: tuple[ModuleType, ...]) -> bytes:
    """The OpenAPI document of these modules' routes, encoded. It depends on nothing but the
    modules, and msgspec takes longer to write their schemas than the rest of `create_app`
    takes, so every app made of the same modules shares one."""
    return encoder.encode(
        openapi.document(
            (module.openapi for module in modules),
            title="Ollama Host",
            version=__version__,
            description="A gateway in front of model servers (Ollama, or any OpenAI-compatible "
            "one) that answers the seed's API, Ollama's and OpenAI's, streams answers, and "
            "records the usage of every call.",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python app.py`, `ollama-host` and `python -m ollama_host`: the program
    (ollama_host/program.py), given this app."""
    return program.main(argv, create_app=create_app)


if __name__ == "__main__":
    sys.exit(main())
