"""The dashboard page at `/`, and the static files it loads from /static."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from access.guard import wants_page

from .openapi import ADMIN, UNAUTHORIZED, Operation, Paths, Reply

# The page's files: static/ beside the packages in a checkout; where pip installed the
# gateway, ollama_host/static (pyproject.toml puts them there, not at site-packages' top).
_HERE = Path(__file__).resolve().parent.parent
_INSTALLED = _HERE / "ollama_host" / "static"
STATIC = _INSTALLED if _INSTALLED.is_dir() else _HERE / "static"

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


async def root(request: Request) -> Response:
    """The page for a browser; for anything else, what Ollama's `/` says: clients (the ollama
    libraries, Open WebUI) probe it to tell that a server is there."""
    if wants_page(request.method, request.headers.get("accept", "").encode("latin-1")):
        return await dashboard(request)
    return PlainTextResponse("Ollama is running")


# The files under /static are mounted once, by routes/docs.py.
routes = [
    Route("/", root, methods=["GET", "HEAD"]),
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
_ROOT = Operation(
    summary="The dashboard page, or `Ollama is running`",
    tag="page",
    description="A browser (which asks for `text/html`) gets the dashboard, behind the admin "
    "token. Anything else gets `Ollama is running` as text, without a token, as from "
    "Ollama's own `/`: clients probe it (`HEAD /` too).",
    auth=ADMIN,
    headers={"Accept": "With `text/html`: the page. Otherwise: `Ollama is running`."},
    replies={
        200: Reply(
            description="The page (`text/html`), or `Ollama is running` (`text/plain`).",
            text=("text/html", "text/plain"),
        ),
        303: _PAGE.replies[303],
        401: UNAUTHORIZED,
    },
)
openapi: Paths = {"/": {"GET": _ROOT}, "/dashboard": {"GET": _PAGE}}
