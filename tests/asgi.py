"""The gateway in this process, for request/response tests: no server, no subprocess.

`in_process(folder, *flags)` builds the app as `python app.py` would, runs its lifespan, and
yields a `Local` whose httpx clients talk to it through `httpx.ASGITransport`. The upstream
is the Ollama stand-in's own ASGI app, reached through the same transport, so the gateway's
real Ollama client speaks real HTTP semantics to it without a socket. ASGITransport buffers
whole responses and skips nothing else: what streams, cancels or stops the server is tested
against a real uvicorn process instead (tests/gateway_proc.py).

As with a gateway process (whose log must hold no traceback), anything the app logs with a
traceback while it runs here fails the test.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx

import upstreams
from app import GatewayApp, create_app
from calls.pipeline import Gateway
from calls.upstream import Upstream
from ollama_client import OllamaUpstream
from ollama_host.backends import open_access
from ollama_host.settings import Settings, parse_settings
from tests import ollama_standin
from tests.gateway_proc import ADMIN_TOKEN, free_port

# What clients of the in-process gateway send as Host: an IP, which the guard always allows.
BASE_URL = "http://127.0.0.1:5000"
# Where the gateway believes the in-process stand-in is (no name is ever resolved).
STANDIN_URL = "http://ollama.test:11434"
# Loggers of the tests' own httpx clients, which log each URL they ask (query and all).
_CLIENT_LOGGERS = ("httpx", "httpcore")


class Local:
    """A gateway app running in this process, and ways to talk to it."""

    def __init__(self, app: GatewayApp, settings: Settings, standin: Any | None) -> None:
        self.app = app
        self.settings = settings
        self.standin = standin
        self.admin_token = ADMIN_TOKEN
        self.data = settings.data_path

    @property
    def gateway(self) -> Gateway:
        """The app's call pipeline, which its lifespan made."""
        gateway: Gateway = self.app.state.gateway
        return gateway

    def client(self, *, admin: bool = True, **headers: str) -> httpx.AsyncClient:
        """A client of the gateway, holding the admin token unless admin=False."""
        if admin:
            headers.setdefault("Authorization", f"Bearer {self.admin_token}")
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL, headers=headers
        )

    async def standin_calls(self) -> list[dict[str, Any]]:
        """The stand-in's view of the calls it was asked, as StandIn.calls() gives it."""
        assert self.standin is not None, "this gateway does not ask the stand-in"
        transport = httpx.ASGITransport(app=self.standin)
        async with httpx.AsyncClient(transport=transport, base_url=STANDIN_URL) as client:
            response = await client.get("/_standin/calls")
        response.raise_for_status()
        calls: list[dict[str, Any]] = response.json()
        return calls


class Keyed:
    """An in-process gateway with API keys (so asking needs one), and the keys it made."""

    def __init__(self, local: Local, keys: dict[str, dict[str, Any]]) -> None:
        self.local = local
        self.keys = keys

    def client(self, key: str | None) -> httpx.AsyncClient:
        """A client holding the key named `key` (a name in `keys`), or no credential."""
        client = self.local.client(admin=False)
        if key is not None:
            client.headers["Authorization"] = f"Bearer {self.keys[key]['key']}"
        return client


class Logged(logging.Handler):
    """Every record logged while it is installed (`logged()`), at any level."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def logged() -> Iterator[Logged]:
    """Keep every log record, DEBUG included, until the block ends."""
    handler = Logged()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.setLevel(level)
        root.removeHandler(handler)


def gateway_log(records: Iterable[logging.LogRecord]) -> str:
    """What the gateway logged, as text: every record but the tests' own clients'.

    Use with caplog at DEBUG to check that a secret never reaches any log line.
    """
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return "\n".join(
        formatter.format(record)
        for record in records
        if not record.name.startswith(_CLIENT_LOGGERS)
    )


class _Tracebacks(logging.Handler):
    """Keeps every record logged with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


def standin_upstream(models: list[str] | None = None) -> tuple[Upstream, Any]:
    """An OllamaUpstream talking to the stand-in's ASGI app in this process."""
    standin = ollama_standin.create_app(models)
    transport = httpx.ASGITransport(app=standin)
    return OllamaUpstream(transport, STANDIN_URL), standin


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
    tracebacks = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(tracebacks)
    try:
        async with app.router.lifespan_context(app):
            yield Local(app, settings, standin)
    finally:
        root.removeHandler(tracebacks)
    assert not tracebacks.records, gateway_log(tracebacks.records)


@asynccontextmanager
async def unreachable(folder: Path) -> AsyncIterator[tuple[Local, str]]:
    """The app whose Ollama address (`http://127.0.0.1:PORT`, given as `--ollama`) has nothing
    listening, and that address. The upstream is the real one, refused by the system."""
    address = f"http://127.0.0.1:{free_port()}"
    upstream = upstreams.build(parse_settings(["--ollama", address], {}))
    async with in_process(folder, "--ollama", address, upstream=upstream) as local:
        yield local, address
