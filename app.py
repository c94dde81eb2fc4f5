"""Ollama Host: settings in, a Starlette app out, and the entry point.

python app.py --help
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

import keys
from errors import ApiError, api_error
from ollama_client import KeepAliveTransport, OllamaClient, OllamaError
from routes import admin, ai, health
from routes.common import error_response
from service import Gateway
from settings import Settings, parse_settings
from store import StoreError, UsageStore

log = logging.getLogger("ollama_host")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


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
    # Starlette logs the traceback after this; the client gets no trace of it.
    return error_response(
        ApiError(500, "internal_error", "the gateway failed unexpectedly; see its log")
    )


def create_app(settings: Settings, store: UsageStore | None = None) -> Starlette:
    """The app; it opens the usage store at startup unless given one already open."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        folder = settings.data_path
        usage = store or UsageStore(folder)
        timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
        # No pool cap: Ollama queues requests itself, and a stream holds its connection
        # for minutes. The lean transport replaces httpcore's pool, whose cost grows with
        # concurrency (docs/performance.md). trust_env=False: proxy variables must never
        # reroute a local upstream (httpx also ignores them once given a transport).
        transport = KeepAliveTransport(max_idle=100)
        try:
            async with httpx.AsyncClient(
                timeout=timeout, transport=transport, trust_env=False
            ) as http:
                ollama = OllamaClient(http, settings.ollama_url)
                secret = keys.load_or_create_secret(folder)
                yield {"gateway": Gateway(settings, ollama, usage, secret)}
        finally:
            await usage.aclose()

    return Starlette(
        routes=[*ai.routes, *admin.routes, *health.routes],
        lifespan=lifespan,
        exception_handlers={
            ApiError: on_api_error,
            OllamaError: on_api_error,
            HTTPException: on_http_error,
            500: on_crash,
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request URL at INFO; the gateway logs each call itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        # Opened here, not in the lifespan, so that a locked or unusable data folder
        # ends the program with one clear line instead of a startup traceback.
        store = UsageStore(settings.data_path)
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    app = create_app(settings, store)
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
    # query string holds the prompt. Each call logs its own line instead.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
