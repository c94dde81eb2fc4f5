"""Running the app: uvicorn, the shutdown grace period, and what the first start shows."""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

import uvicorn

from .connections import ConnectionLimits, protocol_class

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from calls.pipeline import Gateway

    from .settings import Settings

log = logging.getLogger("ollama_host")

# Seconds after the grace period before uvicorn cuts what is left of a stopping server's
# responses without a last word; each call's own `server_shutdown` event comes first.
SHUTDOWN_MARGIN = 2.0


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the gateway when it starts to stop.

    On SIGTERM or Ctrl-C uvicorn stops listening, then waits up to
    timeout_graceful_shutdown for open requests. The gateway's drain starts the grace period
    at that moment: calls still running at its end finish with `server_shutdown`.
    """

    def __init__(
        self, config: uvicorn.Config, app: Starlette, grace: float, ready_fd: int | None = None
    ) -> None:
        super().__init__(config)
        self.gateway_app = app
        self.grace = grace
        self.ready_fd = ready_fd

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.ready_fd is not None:
            # One of --workers N: its process manager learns that it serves (workers.py).
            fd, self.ready_fd = self.ready_fd, None
            say_ready(fd)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        gateway: Gateway | None = getattr(self.gateway_app.state, "gateway", None)
        if gateway is not None:
            log.info("stopping: calls in flight have %g s to finish", self.grace)
            gateway.drain.start(self.grace)
        await super().shutdown(sockets)


def _stopping(signum: int, frame: object) -> None:
    """The signal handler left in place after uvicorn's; see serve."""


def say_ready(fd: int) -> None:
    """Tell the process that runs --workers N that this worker serves (workers._Worker.look)."""
    try:
        with contextlib.suppress(OSError):  # it is gone; die_with ends this worker
            os.write(fd, b"r")
    finally:
        os.close(fd)


def show_new_token(settings: Settings, token: str) -> None:
    """Show a new admin token once, on a terminal only: logs must never hold it."""
    if not sys.stderr.isatty():
        log.warning(
            "made a new admin token, but there is no terminal to show it on, and it is never "
            "logged. Start once from a terminal with --reset-admin-token to see a new one, "
            "or set OLLAMA_GATEWAY_ADMIN_TOKEN"
        )
        return
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(
        f"\n    Open the dashboard (admin token, shown only now; the gateway keeps its hash):\n"
        f"        http://{shown}:{settings.port}/?token={token}\n"
        f"    Scripts send: Authorization: Bearer {token}\n"
        f"    Lost it? Start once with --reset-admin-token.\n",
        file=sys.stderr,
        flush=True,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    app: Starlette, settings: Settings, *, fd: int | None = None, ready_fd: int | None = None
) -> int:
    """Run the app under uvicorn until SIGTERM or Ctrl-C; the exit status.

    With `fd`, serve on that listening socket (one of --workers N) instead of binding one,
    and write a byte on `ready_fd` once serving.
    """
    # A thousand open streams are a few hundred thousand live objects; with the default
    # thresholds a full collection walks them all every few seconds and stalls every stream
    # at once (pauses up to ~1 s measured, docs/performance.md). Freeze what startup made,
    # and collect less often: the same bench then saw no pause over 72 ms.
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    # The access log is off: it would write query strings, and a GET stream's
    # query string holds the prompt. RequestLog writes one line per request instead.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        # Deadlines for requests to arrive and idle connections, and a connection cap.
        http=protocol_class(ConnectionLimits.of(settings)),
        # After the grace period and a margin, uvicorn cancels what is left.
        timeout_graceful_shutdown=math.ceil(settings.grace + 2 * SHUTDOWN_MARGIN),
    )
    # uvicorn restores the handlers it found and then raises the signal it caught again,
    # so that a SIGTERM'd server dies of SIGTERM. A clean stop should exit 0 instead:
    # the handlers it restores ignore the signal, and serve returns.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stopping)
    server = GatewayServer(config, app, settings.grace, ready_fd)
    server.run(sockets=None if fd is None else [socket.socket(fileno=fd)])
    # Not started: the port was taken or the startup failed; uvicorn logged why.
    return 0 if server.started else 1
