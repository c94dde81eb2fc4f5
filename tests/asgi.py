"""The gateway in this process, for request/response tests: no server, no subprocess.

`in_process(folder, *flags)` builds the app as `python app.py` would, runs its lifespan, and
yields a `Local` whose httpx clients talk to it through `httpx.ASGITransport`. The upstream
is the Ollama stand-in's own ASGI app, reached through the same transport, so the gateway's
real Ollama client speaks real HTTP semantics to it without a socket. ASGITransport buffers
whole responses and skips nothing else: what streams, cancels or stops the server is tested
against a real uvicorn process instead (tests/gateway_proc.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from app import GatewayApp, create_app
from calls.upstream import Upstream
from ollama_client import OllamaUpstream
from ollama_host.backends import open_access
from ollama_host.settings import Settings, parse_settings
from tests import ollama_standin
from tests.gateway_proc import ADMIN_TOKEN

# What clients of the in-process gateway send as Host: an IP, which the guard always allows.
BASE_URL = "http://127.0.0.1:5000"


class Local:
    """A gateway app running in this process, and ways to talk to it."""

    def __init__(self, app: GatewayApp, settings: Settings, standin: Any | None) -> None:
        self.app = app
        self.settings = settings
        self.standin = standin
        self.admin_token = ADMIN_TOKEN

    def client(self, *, admin: bool = True, **headers: str) -> httpx.AsyncClient:
        """A client of the gateway, holding the admin token unless admin=False."""
        if admin:
            headers.setdefault("Authorization", f"Bearer {self.admin_token}")
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL, headers=headers
        )


def standin_upstream(models: list[str] | None = None) -> tuple[Upstream, Any]:
    """An OllamaUpstream talking to the stand-in's ASGI app in this process."""
    standin = ollama_standin.create_app(models)
    transport = httpx.ASGITransport(app=standin)
    return OllamaUpstream(transport, "http://ollama.test:11434"), standin


@asynccontextmanager
async def in_process(
    folder: Path,
    *flags: str,
    upstream: Upstream | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Local]:
    """The app `python app.py --data FOLDER FLAGS...` would serve, started and stopped here.

    Without `upstream`, it asks the Ollama stand-in (in this process).
    """
    settings = parse_settings(["--data", str(folder), *flags], env or {})
    access, _ = open_access(settings.store, settings.data_path, ADMIN_TOKEN)
    standin = None
    if upstream is None:
        upstream, standin = standin_upstream()
    app = create_app(settings, upstream=upstream, access=access)
    async with app.router.lifespan_context(app):
        yield Local(app, settings, standin)
