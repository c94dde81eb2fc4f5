"""Redis for the tests: the machine's (OLLAMA_HOST_TEST_REDIS names another).

Tests that need it skip with the reason when it is missing, except in CI (CI=true), where
they fail. Each gateway names its keys after its access scope, which is new for every test
database, so tests sharing the server never share counters.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlsplit

import pytest

URL = os.environ.get("OLLAMA_HOST_TEST_REDIS", "redis://127.0.0.1:6379/0")


@functools.cache
def unavailable() -> str | None:
    parts = urlsplit(URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 5) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(64).startswith(b"+PONG"):
                return f"no Redis answering PING at {URL}"
    except OSError as exc:
        return f"no Redis at {URL}: {exc}"
    return None


def require() -> None:
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs Redis for these tests: {reason}")
    pytest.skip(reason)


def through(port: int) -> str:
    """The same Redis, reached on another port (a proxy's)."""
    parts = urlsplit(URL)
    return f"{parts.scheme}://127.0.0.1:{port}{parts.path}"
