"""GatewayApp hands streams the server's own `send` only while no middleware changes bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Route

from app import GatewayApp, create_app
from ollama_host.settings import parse_settings
from routes.streaming import SERVER_SEND


def _scope_seen_by_a_route(app: GatewayApp) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    class Spy:  # a plain ASGI app: Starlette routes to it as it is
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.update(scope)
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    app.router.routes[:] = [Route("/spy", Spy())]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/spy",
        "raw_path": b"/spy",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 5000),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def call() -> None:
        await app(scope, receive, send)

    anyio.run(call)
    return seen


def test_the_gateway_app_passes_the_server_send(tmp_path: Path) -> None:
    app = create_app(parse_settings(["--data", str(tmp_path)]))

    assert SERVER_SEND in _scope_seen_by_a_route(app)


def test_a_middleware_that_may_change_bodies_turns_it_off(tmp_path: Path) -> None:
    app = create_app(parse_settings(["--data", str(tmp_path)]))
    app.user_middleware.insert(0, Middleware(GZipMiddleware))

    assert SERVER_SEND not in _scope_seen_by_a_route(app)
