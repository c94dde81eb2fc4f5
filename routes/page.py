"""The dashboard page at `/`, and the static files it loads from /static."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from .openapi import ADMIN, UNAUTHORIZED, Operation, Paths, Reply

STATIC = Path(__file__).resolve().parent.parent / "static"

# The page shows prompts and answers written by anyone who can call the gateway. It
# renders them as text, and this policy is the second wall: only the gateway's own
# scripts and styles run, nothing inline, nothing from another origin.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", headers=PAGE_HEADERS)


# The files under /static are mounted once, by routes/docs.py.
routes = [
    Route("/", dashboard, methods=["GET", "HEAD"]),
    Route("/dashboard", dashboard, methods=["GET", "HEAD"]),
]

_PAGE = Operation(
    summary="The dashboard page",
    tag="page",
    description="Where the GPU time goes, live. Open it once with `?token=<admin token>`: "
    "the gateway trades the token for a cookie and redirects to the page without it.",
    auth=ADMIN,
    replies={
        200: Reply(description="The page; it loads its scripts from /static.", text="text/html"),
        303: Reply(description="`?token=` was right: a cookie is set, the token leaves the URL."),
        401: UNAUTHORIZED,
    },
)
openapi: Paths = {"/": {"GET": _PAGE}, "/dashboard": {"GET": _PAGE}}
