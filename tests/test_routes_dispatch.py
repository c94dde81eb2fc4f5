"""routes/dispatch.py: a dict lookup for parameter-less paths, never a different answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match, Route, Router

from app import create_app
from ollama_host.settings import parse_settings
from routes.dispatch import StaticFirstRouter, static_paths

pytestmark = pytest.mark.anyio


def named(name: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(name)

    return endpoint


def test_a_path_an_earlier_route_could_answer_is_left_to_the_scan() -> None:
    routes = [
        Route("/models/{name}", named("one model")),
        Route("/models/all", named("all")),  # never reached: the route above matches first
        Route("/models", named("list")),
    ]

    assert set(static_paths(routes)) == {"/models"}


def test_the_first_route_of_a_path_is_the_one_looked_up() -> None:
    routes = [
        Route("/keys", named("list"), methods=["GET"]),
        Route("/keys", named("make"), methods=["POST"]),
    ]

    assert static_paths(routes)["/keys"] is routes[0]


async def test_another_method_of_the_same_path_still_reaches_its_route() -> None:
    app = Starlette()
    app.router = StaticFirstRouter(
        routes=[
            Route("/keys", named("list"), methods=["GET"]),
            Route("/keys", named("make"), methods=["POST"]),
        ]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        listed = await client.get("/keys")
        made = await client.post("/keys")
        refused = await client.delete("/keys")
        missing = await client.get("/nothing")

    assert (listed.text, made.text) == ("list", "make")
    assert (refused.status_code, missing.status_code) == (405, 404)


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"])
def test_the_gateway_answers_every_path_by_the_same_route_as_a_plain_scan(
    tmp_path: Path, method: str
) -> None:
    app = create_app(parse_settings(["--data", str(tmp_path)], {}))
    fast = app.router
    assert isinstance(fast, StaticFirstRouter)
    plain = Router(routes=fast.routes)
    paths = {getattr(route, "path", "") for route in fast.routes} | {"/v1/models/llama3"}

    def first(router: Router, path: str) -> object:
        scope = {"type": "http", "path": path, "root_path": "", "method": method}
        for route in router.routes:
            if route.matches(scope)[0] is Match.FULL:
                return route
        return None

    for path in sorted(paths):
        looked_up = fast.static.get(path)
        if (
            looked_up is not None
            and looked_up.matches(
                {"type": "http", "path": path, "root_path": "", "method": method}
            )[0]
            is Match.FULL
        ):
            assert looked_up is first(plain, path), path
    assert len(fast.static) > 20  # the fronts' and the admin API's paths, all but a few
