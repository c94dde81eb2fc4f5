"""--metrics-port: /metrics on a loopback port of its own, without a token.

A small threaded HTTP server (the standard library's), beside the gateway's event loop so a
busy loop never delays a scrape. What it serves comes from prometheus_client (the `render`
given); nothing here writes the format. Only GET /metrics; it listens on 127.0.0.1 only, so
what it shows never leaves the machine unless the operator forwards it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("ollama_host.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ADDRESS = "127.0.0.1"


class Served:
    """The running server: close() stops it."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_metrics(port: int, render: Callable[[], bytes]) -> Served:
    """Serve `render()` at http://127.0.0.1:PORT/metrics until closed."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics here")
                return
            body = render()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not worth a log line

    server = ThreadingHTTPServer((ADDRESS, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-port", daemon=True)
    thread.start()
    log.info("metrics on http://%s:%d/metrics", ADDRESS, port)
    return Served(server, thread)
