"""Access control: the closed admin surface, API keys, Host and Origin, limits and sizes.

Each test pins one rule and would fail without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import ROOT, Gateway, free_port, start_gateway
from tests.helpers import ask, assert_error, calls_with, read_until, unique, wait_record
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"
DASHBOARD = "/api/v1/admin/dashboard"
KEYS = "/api/v1/admin/keys"

# Every secret a test here sees, checked against the data folders and logs at the end.
SEEN_SECRETS: list[str] = []


@pytest.fixture(scope="module")
def guarded(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
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
def keyed(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
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


# -- the admin surface -------------------------------------------------------------


@pytest.mark.parametrize("path", [DASHBOARD, KEYS, "/"])
def test_admin_surface_is_closed_by_default(guarded: Gateway, path: str) -> None:
    with guarded.client(admin=False) as client:
        # As a browser asks for a page: `/` is the dashboard only for one.
        response = client.get(path, headers={"Accept": "text/html,*/*;q=0.8"})

    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_wrong_admin_token_is_refused(guarded: Gateway) -> None:
    with guarded.client(admin=False) as client:
        response = client.get(DASHBOARD, headers={"Authorization": "Bearer not-the-token"})

    assert_error(response, 401, "unauthorized")


def test_admin_token_as_bearer_opens_it(guarded: Gateway) -> None:
    with guarded.client() as client:
        assert client.get(DASHBOARD).status_code == 200


def test_token_url_becomes_a_strict_httponly_cookie(guarded: Gateway) -> None:
    with guarded.client(admin=False) as browser:
        response = browser.get(DASHBOARD, params={"token": guarded.admin_token, "limit": "5"})

        assert response.status_code == 303
        assert response.headers["location"] == f"{DASHBOARD}?limit=5"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert guarded.admin_token not in cookie
        assert browser.get(DASHBOARD, params={"limit": "5"}).status_code == 200
        browser.cookies.clear()
        assert browser.get(DASHBOARD).status_code == 401


def test_a_wrong_token_url_sets_no_cookie(guarded: Gateway) -> None:
    with guarded.client(admin=False) as browser:
        response = browser.get(DASHBOARD, params={"token": "guess"})

    assert_error(response, 401, "unauthorized")
    assert "set-cookie" not in response.headers


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
    with start_gateway(
        tmp_path / "data", "--ollama", standin.url, env={"OLLAMA_GATEWAY_ADMIN_TOKEN": ""}
    ) as server:
        with server.client(admin=False) as client:
            assert client.get(DASHBOARD).status_code == 401
        logs = server.logs()

    assert "?token=" not in logs
    assert "there is no terminal to show it on" in logs


# -- API keys ----------------------------------------------------------------------


def test_keys_are_listed_without_secrets(keyed: Keyed) -> None:
    with keyed.gateway.client() as admin:
        listed = admin.get(KEYS).json()

    assert {k["label"] for k in listed} >= {"team", "qwen only", "slow"}
    text = json.dumps(listed)
    for made in keyed.keys.values():
        assert made["key"] not in text
    assert "sha256" not in text
    stored = (keyed.gateway.data / "keys.json").read_text()
    assert all(made["key"] not in stored for made in keyed.keys.values())


def test_asking_needs_a_key_once_keys_exist(keyed: Keyed) -> None:
    with keyed.client(None) as anonymous:
        response = anonymous.post(SYNC, json=ask())

    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("how", ["bearer", "user_key"])
def test_a_valid_key_may_ask_and_is_recorded_by_label(keyed: Keyed, how: str) -> None:
    project, key = unique(), keyed.keys["team"]["key"]
    body = ask(project=project, **({"user_key": key} if how == "user_key" else {}))
    with keyed.client("team" if how == "bearer" else None) as client:
        response = client.post(SYNC, json=body)

    assert response.status_code == 200, response.text
    with keyed.gateway.client() as admin:
        record = wait_record(admin, project)
    assert (record["key_id"], record["key_label"]) == (keyed.keys["team"]["info"]["id"], "team")
    assert record["user"] == keyed.keys["team"]["info"]["fingerprint"]
    assert key not in json.dumps(record)


def test_a_wrong_key_is_refused(keyed: Keyed) -> None:
    fake = keyed.keys["team"]["key"][:-4] + "AAAA"
    with keyed.client(None) as client:
        response = client.post(SYNC, json=ask(), headers={"Authorization": f"Bearer {fake}"})

    assert_error(response, 401, "unauthorized")


def test_a_revoked_key_is_refused(keyed: Keyed) -> None:
    with keyed.gateway.client() as admin:
        revoked = admin.delete(f"{KEYS}/{keyed.keys['revoked']['info']['id']}")
    with keyed.client("revoked") as client:
        response = client.post(SYNC, json=ask())

    assert revoked.json()["revoked"]
    assert_error(response, 401, "unauthorized")


def test_a_key_can_be_relabelled(keyed: Keyed) -> None:
    key_id = keyed.keys["slow"]["info"]["id"]
    with keyed.gateway.client() as admin:
        response = admin.patch(f"{KEYS}/{key_id}", json={"label": "slow lane"})

    assert response.json()["label"] == "slow lane"
    assert response.json()["limits"] == {"rpm": 1}


def test_a_key_may_be_limited_to_models(keyed: Keyed) -> None:
    with keyed.client("qwen-only") as client:
        refused = client.post(SYNC, json=ask("llama3"))
        allowed = client.post(SYNC, json=ask("qwen"))

    assert_error(refused, 403, "model_not_allowed")
    assert allowed.status_code == 200


def test_eventsource_uses_a_single_use_ticket(keyed: Keyed) -> None:
    with keyed.client("team") as client:
        ticket = client.post("/api/v1/ai/tickets").json()["ticket"]
    params = {"agent": "llama3", "content": "hi [[tokens=2]]", "ticket": ticket}
    with keyed.client(None) as browser:
        with browser.stream("GET", STREAM, params=params) as first:
            body = first.read().decode()
        again = browser.get(STREAM, params=params)
        without = browser.get(STREAM, params={"agent": "llama3", "content": "hi"})

    assert first.status_code == 200
    assert "event: done" in body
    assert_error(again, 401, "unauthorized")
    assert_error(without, 401, "unauthorized")


def test_key_requests_per_minute(keyed: Keyed) -> None:
    with keyed.client("slow") as client:
        first = client.post(SYNC, json=ask())
        second = client.post(SYNC, json=ask())

    assert first.status_code == 200
    assert_error(second, 429, "rate_limited")
    assert 1 <= int(second.headers["retry-after"]) <= 60


def test_key_concurrent_streams(keyed: Keyed) -> None:
    with keyed.client("one-stream") as client:
        with client.stream("POST", STREAM, json=ask(content="[[stall=1]]")) as held:
            alive = read_until(held, "token")
            second = client.post(STREAM, json=ask())
            del alive
        assert_error(second, 429, "rate_limited")
        assert second.headers["retry-after"] == "1"


# -- Host, Origin, binding ---------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:5000", "127.0.0.1.nip.io"])
def test_unexpected_host_is_refused(guarded: Gateway, host: str) -> None:
    with guarded.client() as client:
        response = client.get("/api/v1/ai/models", headers={"Host": host})

    assert_error(response, 403, "host_not_allowed")


@pytest.mark.parametrize(
    "host", ["localhost", "127.0.0.1:1234", "[::1]:5000", "gateway.lan:5000", "10.1.2.3"]
)
def test_expected_hosts_pass(guarded: Gateway, host: str) -> None:
    with guarded.client() as client:
        response = client.get("/api/v1/ai/models", headers={"Host": host})

    assert response.status_code == 200


def test_foreign_origin_is_refused(guarded: Gateway) -> None:
    with guarded.client() as client:
        asked = client.post(SYNC, json=ask(), headers={"Origin": "http://evil.example"})
        read = client.get(DASHBOARD, headers={"Origin": "http://evil.example"})

    assert_error(asked, 403, "origin_not_allowed")
    assert_error(read, 403, "origin_not_allowed")


def test_same_origin_passes(guarded: Gateway) -> None:
    with guarded.client() as client:
        response = client.get("/api/v1/ai/models", headers={"Origin": guarded.url})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_allowed_origin_gets_cors_with_credentials_never_star(guarded: Gateway) -> None:
    origin = "http://app.example"
    with guarded.client() as client:
        preflight = client.options(
            SYNC,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization",
            },
        )
        response = client.get("/api/v1/ai/models", headers={"Origin": origin})

    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in response.headers["vary"]


def test_binding_beyond_loopback_without_keys_or_token_refuses(
    standin: StandIn, tmp_path: Path
) -> None:
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


# -- limits and sizes --------------------------------------------------------------


def test_project_requests_per_minute(guarded: Gateway) -> None:
    project, other = unique(), unique()
    with guarded.client() as client:
        statuses = [client.post(SYNC, json=ask(project=project)).status_code for _ in range(3)]
        elsewhere = client.post(SYNC, json=ask(project=other))

    assert statuses == [200, 200, 429]
    assert elsewhere.status_code == 200


def test_project_tokens_per_day(guarded: Gateway) -> None:
    project = unique()
    with guarded.client() as client:
        first = client.post(SYNC, json=ask(content="[[tokens=45]]", project=project))
        wait_record(client, project)
        second = client.post(SYNC, json=ask(project=project))

    assert first.status_code == 200
    assert_error(second, 429, "rate_limited")
    assert 1 <= int(second.headers["retry-after"]) <= 86400


def test_total_concurrent_streams(guarded: Gateway) -> None:
    with (
        guarded.client() as client,
        client.stream("POST", STREAM, json=ask(content="[[stall=1]]", project=unique())) as one,
        client.stream("POST", STREAM, json=ask(content="[[stall=1]]", project=unique())) as two,
    ):
        alive = [read_until(one, "token"), read_until(two, "token")]
        refused = client.post(STREAM, json=ask(project=unique()))
        del alive

    assert_error(refused, 429, "rate_limited")


def test_body_over_the_limit_is_413_before_reading(guarded: Gateway) -> None:
    with guarded.client() as client:
        declared = client.post(
            SYNC, content=b"x" * 5000, headers={"Content-Type": "application/json"}
        )
        chunked = client.post(SYNC, content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]))

    assert_error(declared, 413, "body_too_large")
    assert_error(chunked, 413, "body_too_large")


def test_prompt_over_the_limit_is_413(guarded: Gateway) -> None:
    with guarded.client() as client:
        response = client.post(SYNC, json=ask(content="x" * 400, template="y" * 101))

    assert_error(response, 413, "prompt_too_large")


def test_model_name_length_is_limited(guarded: Gateway) -> None:
    with guarded.client() as client:
        response = client.post(SYNC, json=ask("m" * 201))

    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/copy"),
        ("POST", "/api/blobs/sha256:0a8c"),
        ("HEAD", "/api/blobs/sha256:0a8c"),
    ],
)
def test_ollama_management_calls_are_not_passed_through(
    guarded: Gateway, standin: StandIn, method: str, path: str
) -> None:
    before = len(standin.calls())
    with guarded.client() as client:
        response = client.request(method, path, json={"model": "llama3", "name": "x"})

    assert response.status_code == 403
    if method != "HEAD":
        assert "does not pass Ollama's model management" in response.json()["error"]
    assert len(standin.calls()) == before


def test_the_upstream_address_never_comes_from_a_request(
    guarded: Gateway, standin: StandIn
) -> None:
    marker = unique("ssrf")
    body = {
        **ask(content=marker, project=unique()),
        "api_base": "http://169.254.169.254",
        "ollama": "x",
    }
    with guarded.client() as client:
        response = client.post(SYNC, json=body)

    assert response.status_code == 200
    assert calls_with(standin.calls(), marker)


# -- found in review -----------------------------------------------------------------


def test_revoking_the_last_key_does_not_reopen_asking(standin: StandIn, tmp_path: Path) -> None:
    with (
        start_gateway(tmp_path / "data", "--ollama", standin.url) as server,
        server.client() as admin,
    ):
        made = admin.post(KEYS, json={"label": "only"}).json()
        SEEN_SECRETS.append(made["key"])
        admin.delete(f"{KEYS}/{made['info']['id']}")
        with server.client(admin=False) as anyone:
            response = anyone.post(SYNC, json=ask())

    assert_error(response, 401, "unauthorized")


def test_a_patch_in_flight_cannot_undo_a_revocation(keyed: Keyed) -> None:
    key_id = keyed.keys["team"]["info"]["id"]
    body = json.dumps({"label": "renamed"}).encode()
    gateway = keyed.gateway
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as patch:
        # The PATCH's head goes first; its body only after the key is revoked.
        patch.sendall(
            b"PATCH %s/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (KEYS.encode(), key_id.encode(), gateway.admin_token.encode(), len(body))
        )
        with gateway.client() as admin:
            assert admin.delete(f"{KEYS}/{key_id}").json()["revoked"]
        patch.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += patch.recv(65536)
    with gateway.client() as admin:
        key = next(k for k in admin.get(KEYS).json() if k["id"] == key_id)
    with keyed.client("team") as client:
        asked = client.post(SYNC, json=ask())

    # The PATCH sees the key as it is once its body is read: revoked, so refused.
    assert answer.startswith(b"HTTP/1.1 409")
    assert key["label"] == "team"
    assert key["revoked"]
    assert_error(asked, 401, "unauthorized")


@pytest.mark.parametrize("mode", ["no-cors", "cors"])
@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_cross_site_request_without_origin_is_refused(
    guarded: Gateway, site: str, mode: str
) -> None:
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode}
    with guarded.client() as client:
        response = client.get(
            STREAM, params={"agent": "llama3", "content": "spend"}, headers=headers
        )

    assert_error(response, 403, "origin_not_allowed")


def test_a_link_from_another_site_may_still_open_the_page(guarded: Gateway) -> None:
    headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Accept": "text/html"}
    with guarded.client(admin=False) as browser:
        page = browser.get("/", headers=headers)
        asking = browser.get(STREAM, params={"agent": "llama3", "content": "x"}, headers=headers)

    # The guard lets the navigation through; the admin gate still wants the token.
    assert_error(page, 401, "unauthorized")
    assert_error(asking, 403, "origin_not_allowed")


def test_the_guards_errors_carry_the_request_id(guarded: Gateway) -> None:
    with guarded.client() as client:
        response = client.get("/api/v1/ai/models", headers={"Host": "evil.example"})

    error = assert_error(response, 403, "host_not_allowed")
    assert error["request_id"] == response.headers["x-request-id"]


def test_the_static_copy_of_the_page_has_the_same_policy(guarded: Gateway) -> None:
    with guarded.client(admin=False) as browser:
        response = browser.get("/static/dashboard.html")

    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
