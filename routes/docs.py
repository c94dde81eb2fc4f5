"""/openapi.json, and the two pages that read it: Swagger UI at /docs and ReDoc at /redoc.

Both pages load only files shipped in static/ (see static/vendor/README.md), so they
work offline, and neither has an inline script, so they run under a strict CSP.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .openapi import Operation, Paths, Reply
from .page import PAGE_HEADERS, STATIC

# Scripts and styles from this server only. Both UIs set inline style attributes and
# ReDoc's search runs in a blob: worker; images include data: URIs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}


async def openapi_json(request: Request) -> Response:
    # Built once by create_app, from every routes module's `openapi` description.
    body: bytes = request.app.state.openapi
    return Response(body, media_type="application/json")


async def swagger_ui(request: Request) -> Response:
    return FileResponse(STATIC / "docs" / "swagger.html", headers=_PAGE_HEADERS)


async def redoc(request: Request) -> Response:
    return FileResponse(STATIC / "docs" / "redoc.html", headers=_PAGE_HEADERS)


class Static(StaticFiles):
    """The static files, with the pages' security headers: dashboard.html is one of them."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


routes: list[BaseRoute] = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", swagger_ui, methods=["GET"]),
    Route("/redoc", redoc, methods=["GET"]),
    Mount("/static", Static(directory=STATIC), name="static"),
]

_PAGE = Reply(description="An HTML page; it loads its scripts from /static.", text="text/html")

openapi: Paths = {
    "/openapi.json": {
        "GET": Operation(
            summary="This document",
            tag="docs",
            replies={
                200: Reply(
                    description="The OpenAPI 3.1 document, generated from the API's schemas.",
                    json=dict[str, Any],
                )
            },
        )
    },
    "/docs": {"GET": Operation(summary="Swagger UI", tag="docs", replies={200: _PAGE})},
    "/redoc": {"GET": Operation(summary="ReDoc", tag="docs", replies={200: _PAGE})},
}
