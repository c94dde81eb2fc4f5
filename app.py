"""Ollama Host: settings in, a Starlette app out, and the entry point.

python app.py --help
"""

from __future__ import annotations

import functools
import gc
import ipaddress
import logging
import math
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from errors import ApiError, api_error
from guard import Guard
from keys import Access, KeyRing
from ollama_client import KeepAliveTransport, OllamaClient, OllamaError
from requestlog import RequestLog, configure_logging
from routes import admin, ai, docs, health, openapi, page
from routes import keys as key_routes
from routes.common import encoder, error_response
from service import Gateway
from settings import Settings, __version__, parse_settings
from store import StoreError, UsageStore

log = logging.getLogger("ollama_host")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}

# Each module exports `routes` and an `openapi` description of them.
MODULES = (ai, admin, key_routes, health, docs, page)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError | OllamaError)
    return error_response(api_error(exc))


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = (
        f"no route {request.method} {request.url.path}"
        if exc.status_code in _HTTP_CODES
        else exc.detail
    )
    return error_response(ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})))


async def on_crash(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback after this; the client gets no trace of it, only
    # the request id to find it by. This runs outside RequestLog, hence the state.
    return error_response(
        ApiError(
            500,
            "internal_error",
            "the gateway failed unexpectedly; see its log",
            request_id=getattr(request.state, "request_id", None),
        )
    )


class GatewayApp(Starlette):
    """Starlette, plus the server's own `send` in each HTTP scope, for streamed bodies.

    The middleware here (Starlette's error and exception layers, RequestLog, Guard) wrap
    `send` only to see or change `http.response.start`; body messages pass through each
    unchanged. A stream sends a body message per token, so CallEvents sends those to the
    server directly: three Python calls less per token, about 5% of what relaying a token
    costs (docs/performance.md). With any other middleware added, nothing is bypassed.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._bodies_untouched:
            scope[ai.SERVER_SEND] = send
        await super().__call__(scope, receive, send)

    @functools.cached_property
    def _bodies_untouched(self) -> bool:
        known: tuple[object, ...] = (RequestLog, Guard)
        return all(m.cls in known for m in self.user_middleware)


def create_app(
    settings: Settings, store: UsageStore | None = None, access: Access | None = None
) -> GatewayApp:
    """The app; it opens the usage store at startup unless given one already open."""
    if access is None:
        access, _ = Access.open(settings.data_path, settings.admin_token)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        folder = settings.data_path
        usage = store or UsageStore(folder, retention_days=settings.retention_days)
        timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
        # The lean transport replaces httpcore's pool, whose cost grows with concurrency,
        # and OllamaClient hands it httpx requests without AsyncClient's layers
        # (docs/performance.md). No connection cap: Ollama queues requests itself, and a
        # stream holds its connection for minutes. No proxy variables are read: they must
        # never reroute a local upstream.
        try:
            async with OllamaClient(
                KeepAliveTransport(max_idle=100), settings.ollama_url, timeout
            ) as ollama:
                gateway = Gateway(settings, ollama, usage, access)
                # For GatewayServer.shutdown, which must reach it before connections close.
                app.state.gateway = gateway
                yield {"gateway": gateway}
        finally:
            await usage.aclose()

    app = GatewayApp(
        routes=[route for module in MODULES for route in module.routes],
        lifespan=lifespan,
        # RequestLog first, so that what the guard refuses is logged with an id too.
        middleware=[
            Middleware(RequestLog, content=settings.log_content),
            Middleware(
                Guard,
                admin=access.admin,
                allowed_hosts=settings.host_list,
                cors_origins=settings.origin_list,
                max_body=settings.max_body,
            ),
        ],
        exception_handlers={
            ApiError: on_api_error,
            OllamaError: on_api_error,
            HTTPException: on_http_error,
            500: on_crash,
        },
    )
    app.state.openapi = encoder.encode(
        openapi.document(
            (module.openapi for module in MODULES),
            title="Ollama Host",
            version=__version__,
            description="A gateway in front of Ollama that streams answers as Server-Sent "
            "Events and records the usage of every call.",
        )
    )
    return app


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the gateway when it starts to stop.

    On SIGTERM or Ctrl-C uvicorn stops listening, then waits up to
    timeout_graceful_shutdown for open requests. `drain` starts the grace period
    at that moment: calls still running at its end finish with `server_shutdown`.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette, grace: float) -> None:
        super().__init__(config)
        self.gateway_app = app
        self.grace = grace

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        gateway: Gateway | None = getattr(self.gateway_app.state, "gateway", None)
        if gateway is not None:
            log.info("stopping: calls in flight have %g s to finish", self.grace)
            gateway.drain(self.grace)
        await super().shutdown(sockets)


def _stopping(signum: int, frame: object) -> None:
    """The signal handler left in place after uvicorn's; see main."""


def show_new_token(settings: Settings, token: str) -> None:
    """Show a new admin token once, on a terminal only: logs must never hold it."""
    if not sys.stderr.isatty():
        log.warning(
            "made a new admin token, but there is no terminal to show it on, and it is never "
            "logged. Start once from a terminal with --reset-admin-token to see a new one, "
            "or set OLLAMA_GATEWAY_ADMIN_TOKEN"
        )
        return
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(
        f"\n    Open the dashboard (admin token, shown only now; the gateway keeps its hash):\n"
        f"        http://{shown}:{settings.port}/?token={token}\n"
        f"    Scripts send: Authorization: Bearer {token}\n"
        f"    Lost it? Start once with --reset-admin-token.\n",
        file=sys.stderr,
        flush=True,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    configure_logging(settings)
    try:
        # Opened here, not in the lifespan, so that a locked or unusable data folder
        # ends the program with one clear line instead of a startup traceback.
        store = UsageStore(settings.data_path, retention_days=settings.retention_days)
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    # Checked before any admin token is made: a refused start must not leave behind a token
    # that nobody was shown.
    keys_exist = KeyRing(settings.data_path).active
    if not is_loopback(settings.host) and not keys_exist and not settings.admin_token:
        log.error(
            "refusing to listen on %s: anyone who can reach it could use Ollama and read every "
            "prompt. Create an API key first (on 127.0.0.1: POST /api/v1/admin/keys), or set "
            "--admin-token explicitly to accept an open asking endpoint",
            settings.host,
        )
        store.close()
        return 1
    access, new_token = Access.open(
        settings.data_path, settings.admin_token, reset=settings.reset_admin_token
    )
    app = create_app(settings, store, access)
    if new_token:
        show_new_token(settings, new_token)
    # A thousand open streams are a few hundred thousand live objects; with the default
    # thresholds a full collection walks them all every few seconds and stalls every stream
    # at once (pauses up to ~1 s measured, docs/performance.md). Freeze what startup made,
    # and collect less often: the same bench then saw no pause over 72 ms.
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    log.info(
        "Ollama Host on http://%s:%d, asking Ollama at %s, usage in %s",
        settings.host,
        settings.port,
        settings.ollama_url,
        settings.data_path,
    )
    # The access log is off: it would write query strings, and a GET stream's
    # query string holds the prompt. RequestLog writes one line per request instead.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        # After the grace period and sse-starlette's margin, uvicorn cancels what is left.
        timeout_graceful_shutdown=math.ceil(settings.grace + 2 * ai.SHUTDOWN_MARGIN),
    )
    # uvicorn restores the handlers it found and then raises the signal it caught again,
    # so that a SIGTERM'd server dies of SIGTERM. A clean stop should exit 0 instead:
    # the handlers it restores ignore the signal, and main returns.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stopping)
    server = GatewayServer(config, app, settings.grace)
    server.run()
    # Not started: the port was taken or the startup failed; uvicorn logged why.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
