"""What the operating features cost per request and per token, measured in-process.

    .venv/bin/python -m bench.ops_overhead

1. RequestLog (request id header + one log line) around a trivial Starlette route,
   against the same app without it; the log goes to a StreamHandler on /dev/null, so
   formatting and writing the line are counted.
2. The shutdown watch every await on an upstream goes through: Drain.guard (once per
   ask) and its inlined form in Call.events (once per upstream read of a stream),
   against a bare await.

Numbers are µs per call, best of 5 rounds; the machine is shared, so read ratios.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from calls.shutdown import Drain
from ollama_host.requestlog import JSONFormatter, RequestLog

N = 20_000


async def hello(request: Request) -> Response:
    return Response(b"hi", media_type="text/plain")


def _app(*, logged: bool) -> Starlette:
    middleware = [Middleware(RequestLog)] if logged else []
    return Starlette(routes=[Route("/", hello)], middleware=middleware)


async def _per_request(app: Starlette) -> float:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(N):
            await app({**scope, "state": {}}, receive, send)
        best = min(best, (time.perf_counter() - start) / N)
    return best * 1e6


async def _per_await(how: str) -> float:
    drain = Drain()
    task = asyncio.current_task()
    assert task is not None

    async def piece() -> int:
        return 1

    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        if how == "guard":
            for _ in range(N):
                await drain.guard(piece())
        elif how == "inline":
            # What Call.events does around each upstream read.
            for _ in range(N):
                drain.waiting(task)
                try:
                    await piece()
                except asyncio.CancelledError:
                    if drain.cut_short(task):
                        raise RuntimeError("cut short") from None
                    raise
                finally:
                    drain.done_waiting(task)
        else:
            for _ in range(N):
                await piece()
        best = min(best, (time.perf_counter() - start) / N)
    return best * 1e6


def _log_to_devnull(json: bool) -> None:
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    if json:
        handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


async def main() -> None:
    _log_to_devnull(json=False)
    bare = await _per_request(_app(logged=False))
    logged = await _per_request(_app(logged=True))
    _log_to_devnull(json=True)
    logged_json = await _per_request(_app(logged=True))
    logging.getLogger().setLevel(logging.WARNING)
    ids_only = await _per_request(_app(logged=True))
    for label, value in [
        ("trivial route, no middleware", bare),
        ("+ RequestLog, text line", logged),
        ("+ RequestLog, JSON line", logged_json),
        ("+ RequestLog, log level warning", ids_only),
    ]:
        print(f"{label:34}{value:7.1f} µs/request (+{value - bare:.1f})")
    plain = await _per_await("bare")
    bounded = await _per_await("guard")
    inline = await _per_await("inline")
    print(f"bare await                        {plain:7.2f} µs")
    print(f"await via guard          {bounded:7.2f} µs (+{bounded - plain:.2f} per ask)")
    print(f"shutdown watch, inline            {inline:7.2f} µs (+{inline - plain:.2f} per token)")


if __name__ == "__main__":
    asyncio.run(main())
