"""Routing by a dict lookup for paths without parameters, as a Starlette Router.

Starlette tries each route's regex in turn, about a microsecond and a half a route, and with
three fronts and the admin API there are some forty: a call to Ollama's `/api/chat` paid for
every seed and OpenAI route before it. Here a path that a parameter-less route owns is found
by one dict lookup; everything else (paths with parameters, mounts, 404s, 405s, redirects)
goes through Starlette's own scan, unchanged.

The lookup never changes which route answers: a path is put in the dict only if no route
before its owner could match it, so the first match in order is still the one that answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _static(route: BaseRoute) -> bool:
    return isinstance(route, Route) and not route.param_convertors


def _could_match(route: BaseRoute, path: str) -> bool:
    """Whether `route` matches `path` for any method (a full or a partial match)."""
    for method in _METHODS:
        scope = {"type": "http", "path": path, "root_path": "", "method": method}
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return True
    return False


def static_paths(routes: Sequence[BaseRoute]) -> dict[str, Route]:
    """Each parameter-less path, mapped to the first route that would answer it."""
    found: dict[str, Route] = {}
    dynamic: list[BaseRoute] = []
    for route in routes:
        if not _static(route):
            dynamic.append(route)
            continue
        assert isinstance(route, Route)
        if route.path in found:
            continue  # an earlier route of the same path comes first (another method)
        if any(_could_match(earlier, route.path) for earlier in dynamic):
            continue
        found[route.path] = route
    return found


class StaticFirstRouter(Router):
    """Starlette's Router, with parameter-less paths found by a dict lookup first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.static = static_paths(self.routes)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.static.get(scope["path"])
            if route is not None:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self)
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)
