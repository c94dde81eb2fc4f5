"""Access control that needs a real gateway process: the admin token shown on a terminal at
first start (and never logged), the refusal to listen beyond loopback unprotected, and stream
limits while streams are held open on real sockets.

Each test pins one rule and would fail without it. The rest of access control is tested in
process: test_access_guard.py, test_access_identity.py, test_access_keys.py,
test_access_limits.py, test_routes_keys.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import ROOT, Gateway, free_port, start_gateway
from tests.helpers import ask, assert_error, read_until, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"
DASHBOARD = "/api/v1/admin/dashboard"
KEYS = "/api/v1/admin/keys"

# Every secret a test here sees, checked against the data folders and logs at the end.
SEEN_SECRETS: list[str] = []


@pytest.fixture(scope="module")
def guarded_server(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """No keys, but limits, a host name, an allowed origin and small sizes."""
    data = tmp_path_factory.mktemp("guarded") / "data"
    flags = [
        *(
            "--ollama",
            standin.url,
            "--allowed-hosts",
            "gateway.lan",
            "--cors-origins",
            "http://app.example",
        ),
        *("--max-body", "4096", "--max-prompt", "500", "--project-rpm", "2"),
        *("--project-tokens-per-day", "40", "--max-streams", "2"),
    ]
    with start_gateway(data, *flags) as server:
        SEEN_SECRETS.append(server.admin_token)
        yield server
    _assert_no_secret_in(server)


class Keyed:
    def __init__(self, gateway: Gateway, keys: dict[str, dict[str, Any]]) -> None:
        self.gateway = gateway
        self.keys = keys

    def client(self, key: str | None) -> httpx.Client:
        client = self.gateway.client(admin=False)
        if key is not None:
            client.headers["Authorization"] = f"Bearer {self.keys[key]['key']}"
        return client


@pytest.fixture(scope="module")
def keyed_server(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    """A gateway with API keys, so asking needs one."""
    data = tmp_path_factory.mktemp("keyed") / "data"
    with start_gateway(data, "--ollama", standin.url) as server:
        made: dict[str, dict[str, Any]] = {}
        with server.client() as admin:
            for name, body in {
                "team": {"label": "team"},
                "qwen-only": {"label": "qwen only", "models": ["qwen"]},
                "slow": {"label": "slow", "limits": {"rpm": 1}},
                "one-stream": {"label": "one stream", "limits": {"streams": 1}},
                "revoked": {"label": "to revoke"},
            }.items():
                response = admin.post(KEYS, json=body)
                assert response.status_code == 201, response.text
                made[name] = response.json()
                SEEN_SECRETS.append(made[name]["key"])
        SEEN_SECRETS.append(server.admin_token)
        yield Keyed(server, made)
    _assert_no_secret_in(server)


def _assert_no_secret_in(server: Gateway) -> None:
    texts = [server.logs()] + [
        p.read_text(errors="replace") for p in server.data.rglob("*") if p.is_file()
    ]
    for secret in SEEN_SECRETS:
        for text in texts:
            assert secret not in text


# -- the admin token ---------------------------------------------------------------


def _start_on_a_terminal(
    data: Path, url: str, *flags: str
) -> tuple[subprocess.Popen[bytes], str, int]:
    """Start the gateway with stderr on a pseudo-terminal, as in an interactive shell.

    Returns the process, what it wrote to the terminal up to readiness, and its port.
    """
    port = free_port()
    main, child = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "app.py"),
            "--port",
            str(port),
            "--data",
            str(data),
            "--ollama",
            url,
            *flags,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child,
        env=env,
    )
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 20
    while b"Uvicorn running" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            seen += os.read(main, 65536)
    os.close(main)
    assert b"Uvicorn running" in seen, seen
    return proc, seen.decode(), port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(15)


def test_first_start_shows_a_new_token_once_on_the_terminal_and_keeps_its_hash(
    standin: StandIn, tmp_path: Path
) -> None:
    """What a real process shows on a real (pseudo-)terminal, across three starts."""
    data = tmp_path / "data"
    proc, screen, port = _start_on_a_terminal(data, standin.url)
    try:
        found = re.search(r"/\?token=([\w-]+)", screen)
        assert found, screen
        token = found.group(1)
        SEEN_SECRETS.append(token)
        bearer = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"http://127.0.0.1:{port}{DASHBOARD}", headers=bearer).status_code == 200
    finally:
        _stop(proc)
    stored = json.loads((data / "admin-token.json").read_text())
    assert stored["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert oct((data / "admin-token.json").stat().st_mode)[-3:] == "600"

    proc, screen, port = _start_on_a_terminal(data, standin.url)
    try:
        assert "?token=" not in screen
        assert httpx.get(f"http://127.0.0.1:{port}{DASHBOARD}", headers=bearer).status_code == 200
    finally:
        _stop(proc)

    proc, screen, port = _start_on_a_terminal(data, standin.url, "--reset-admin-token")
    try:
        assert "?token=" in screen
        assert token not in screen
        assert httpx.get(f"http://127.0.0.1:{port}{DASHBOARD}", headers=bearer).status_code == 401
    finally:
        _stop(proc)
    for path in data.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace")


def test_a_new_token_is_never_logged(standin: StandIn, tmp_path: Path) -> None:
    """The log of a real process started without a terminal."""
    with start_gateway(
        tmp_path / "data", "--ollama", standin.url, env={"OLLAMA_GATEWAY_ADMIN_TOKEN": ""}
    ) as server:
        with server.client(admin=False) as client:
            assert client.get(DASHBOARD).status_code == 401
        logs = server.logs()

    assert "?token=" not in logs
    assert "there is no terminal to show it on" in logs


# -- streams held open ---------------------------------------------------------------


def test_key_concurrent_streams(keyed_server: Keyed) -> None:
    """Needs a stream held open while another request is made: httpx.ASGITransport returns
    only once a response has ended."""
    with keyed_server.client("one-stream") as client:
        with client.stream("POST", STREAM, json=ask(content="[[stall=1]]")) as held:
            alive = read_until(held, "token")
            second = client.post(STREAM, json=ask())
            del alive
        assert_error(second, 429, "rate_limited")
        assert second.headers["retry-after"] == "1"


def test_total_concurrent_streams(guarded_server: Gateway) -> None:
    """As above: two streams held open on real sockets."""
    with (
        guarded_server.client() as client,
        client.stream("POST", STREAM, json=ask(content="[[stall=1]]", project=unique())) as one,
        client.stream("POST", STREAM, json=ask(content="[[stall=1]]", project=unique())) as two,
    ):
        alive = [read_until(one, "token"), read_until(two, "token")]
        refused = client.post(STREAM, json=ask(project=unique()))
        del alive

    assert_error(refused, 429, "rate_limited")


# -- binding -----------------------------------------------------------------------


def test_binding_beyond_loopback_without_keys_or_token_refuses(
    standin: StandIn, tmp_path: Path
) -> None:
    """A startup refusal: the exit status and the log of a real process."""
    data = tmp_path / "data"
    server = start_gateway(
        data,
        "--host",
        "0.0.0.0",
        "--ollama",
        standin.url,
        env={"OLLAMA_GATEWAY_ADMIN_TOKEN": ""},
        wait=False,
    )

    assert server.wait() == 1
    assert "refusing to listen on 0.0.0.0" in server.logs()
    server.stop()
    # Refused before any admin token is made: none is left that nobody was shown.
    assert not (data / "admin-token.json").exists()
