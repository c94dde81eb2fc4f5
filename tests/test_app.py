"""app.py: the app as create_app builds it: routing, the error shape each front gets, and the
server's own `send` handed to streams only while no middleware changes bodies."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app import GatewayApp, create_app, renderer
from calls.errors import CallError
from ollama_host.settings import parse_settings
from routes.errors import error_response
from routes.streaming import SERVER_SEND
from tests.asgi import Local
from tests.helpers import assert_error


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


# -- routing and the error shape ----------------------------------------------------------


@pytest.mark.anyio
async def test_unknown_route_and_method_are_json_errors(aclient: httpx.AsyncClient) -> None:
    assert_error(await aclient.get("/api/v1/nothing"), 404, "not_found")
    assert_error(await aclient.get("/api/v1/ai/ask_sync"), 405, "method_not_allowed")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/copy"),
        ("POST", "/api/blobs/sha256:0a8c"),
        ("HEAD", "/api/blobs/sha256:0a8c"),
    ],
)
async def test_ollama_management_calls_are_not_passed_through(
    guarded: Local, method: str, path: str
) -> None:
    before = len(await guarded.standin_calls())
    async with guarded.client() as client:
        response = await client.request(method, path, json={"model": "llama3", "name": "x"})

    assert response.status_code == 403
    if method != "HEAD":
        assert "does not pass Ollama's model management" in response.json()["error"]
    assert len(await guarded.standin_calls()) == before


def _front(prefix: str | None) -> ModuleType:
    """A routes module; with a prefix, one that renders its errors in a shape of its own."""
    module = ModuleType(f"front{prefix}")
    if prefix is not None:

        def render(error: CallError) -> Response:
            return PlainTextResponse(f"{prefix} {error.code}")

        module.PREFIX = prefix  # type: ignore[attr-defined]
        module.error_response = render  # type: ignore[attr-defined]
    return module


def test_an_error_is_rendered_by_the_front_with_the_longest_matching_prefix() -> None:
    render_for = renderer([_front("/api/"), _front("/api/v1/"), _front(None)])
    error = CallError(404, "not_found", "no")

    assert render_for("/api/v1/x")(error).body == b"/api/v1/ not_found"
    assert render_for("/api/v1")(error).body == b"/api/v1/ not_found"
    assert render_for("/api/tags")(error).body == b"/api/ not_found"
    assert render_for("/api")(error).body == b"/api/ not_found"
    assert render_for("/apis") is error_response
    assert render_for("/health") is error_response
