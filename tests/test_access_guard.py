"""access/guard.py: the gate every request passes first (Host, Origin, body size, the admin
surface), in process through httpx.ASGITransport, and the Guard on its own.

Each test pins one rule and would fail without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from access.guard import SESSION_COOKIE, Guard, host_name, is_admin_path, session_of
from access.keys import AdminToken, sha256
from calls.errors import CallError
from tests.asgi import BASE_URL, Local
from tests.helpers import ask, assert_error

pytestmark = pytest.mark.anyio

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"
DASHBOARD = "/api/v1/admin/dashboard"
KEYS = "/api/v1/admin/keys"


# -- the admin surface -------------------------------------------------------------


@pytest.mark.parametrize("path", [DASHBOARD, KEYS, "/"])
async def test_admin_surface_is_closed_by_default(guarded: Local, path: str) -> None:
    async with guarded.client(admin=False) as client:
        # As a browser asks for a page: `/` is the dashboard only for one.
        response = await client.get(path, headers={"Accept": "text/html,*/*;q=0.8"})

    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_wrong_admin_token_is_refused(guarded: Local) -> None:
    async with guarded.client(admin=False) as client:
        response = await client.get(DASHBOARD, headers={"Authorization": "Bearer not-the-token"})

    assert_error(response, 401, "unauthorized")


async def test_admin_token_as_bearer_opens_it(guarded: Local) -> None:
    async with guarded.client() as client:
        assert (await client.get(DASHBOARD)).status_code == 200


async def test_token_url_becomes_a_strict_httponly_cookie(guarded: Local) -> None:
    async with guarded.client(admin=False) as browser:
        response = await browser.get(DASHBOARD, params={"token": guarded.admin_token, "limit": "5"})

        assert response.status_code == 303
        assert response.headers["location"] == f"{DASHBOARD}?limit=5"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert guarded.admin_token not in cookie
        assert (await browser.get(DASHBOARD, params={"limit": "5"})).status_code == 200
        browser.cookies.clear()
        assert (await browser.get(DASHBOARD)).status_code == 401


async def test_a_wrong_token_url_sets_no_cookie(guarded: Local) -> None:
    async with guarded.client(admin=False) as browser:
        response = await browser.get(DASHBOARD, params={"token": "guess"})

    assert_error(response, 401, "unauthorized")
    assert "set-cookie" not in response.headers


# -- Host and Origin ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:5000", "127.0.0.1.nip.io"])
async def test_unexpected_host_is_refused(guarded: Local, host: str) -> None:
    async with guarded.client() as client:
        response = await client.get("/api/v1/ai/models", headers={"Host": host})

    assert_error(response, 403, "host_not_allowed")


@pytest.mark.parametrize(
    "host", ["localhost", "127.0.0.1:1234", "[::1]:5000", "gateway.lan:5000", "10.1.2.3"]
)
async def test_expected_hosts_pass(guarded: Local, host: str) -> None:
    async with guarded.client() as client:
        response = await client.get("/api/v1/ai/models", headers={"Host": host})

    assert response.status_code == 200


async def test_foreign_origin_is_refused(guarded: Local) -> None:
    async with guarded.client() as client:
        asked = await client.post(SYNC, json=ask(), headers={"Origin": "http://evil.example"})
        read = await client.get(DASHBOARD, headers={"Origin": "http://evil.example"})

    assert_error(asked, 403, "origin_not_allowed")
    assert_error(read, 403, "origin_not_allowed")


async def test_same_origin_passes(guarded: Local) -> None:
    async with guarded.client() as client:
        response = await client.get("/api/v1/ai/models", headers={"Origin": BASE_URL})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_a_listed_origin_gets_cors_naming_it_never_star(guarded: Local) -> None:
    origin = "http://app.example"
    async with guarded.client() as client:
        preflight = await client.options(
            SYNC,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization",
            },
        )
        response = await client.get("/api/v1/ai/models", headers={"Origin": origin})

    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-origin"] == origin
    # Credentials only for --admin-origins (tests/test_access_origins.py).
    assert "access-control-allow-credentials" not in response.headers
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize("mode", ["no-cors", "cors"])
@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_a_cross_site_request_without_origin_is_refused(
    guarded: Local, site: str, mode: str
) -> None:
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode}
    async with guarded.client() as client:
        response = await client.get(
            STREAM, params={"agent": "llama3", "content": "spend"}, headers=headers
        )

    assert_error(response, 403, "origin_not_allowed")


async def test_a_link_from_another_site_may_still_open_the_page(guarded: Local) -> None:
    headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Accept": "text/html"}
    async with guarded.client(admin=False) as browser:
        page = await browser.get("/", headers=headers)
        asking = await browser.get(
            STREAM, params={"agent": "llama3", "content": "x"}, headers=headers
        )

    # The guard lets the navigation through; the admin gate still wants the token.
    assert_error(page, 401, "unauthorized")
    assert_error(asking, 403, "origin_not_allowed")


async def test_the_guards_errors_carry_the_request_id(guarded: Local) -> None:
    async with guarded.client() as client:
        response = await client.get("/api/v1/ai/models", headers={"Host": "evil.example"})

    error = assert_error(response, 403, "host_not_allowed")
    assert error["request_id"] == response.headers["x-request-id"]


# -- sizes -------------------------------------------------------------------------


async def test_body_over_the_limit_is_413_before_reading(guarded: Local) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"{" + b" " * 3000
        yield b" " * 3000 + b"}"

    async with guarded.client() as client:
        declared = await client.post(
            SYNC, content=b"x" * 5000, headers={"Content-Type": "application/json"}
        )
        chunked = await client.post(SYNC, content=chunks())

    assert_error(declared, 413, "body_too_large")
    assert_error(chunked, 413, "body_too_large")


# -- the Guard on its own ----------------------------------------------------------

TOKEN = "the-admin-token"
ADMIN = AdminToken(sha256(TOKEN), b"session secret")


def render(path: str, error: CallError) -> tuple[bytes, bytes]:
    """A front's renderer, which says whose path it was."""
    return b"text/plain", f"{path} {error.status} {error.code}".encode()


class Behind:
    """The app behind the guard: answers 200 with the body it received, and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def guard_client(behind: Behind, **options: Any) -> httpx.AsyncClient:
    guard = Guard(behind, render=render, admin=ADMIN, **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url=BASE_URL)


async def test_a_refusal_is_rendered_by_the_renderer_for_its_path() -> None:
    behind = Behind()
    async with guard_client(behind) as client:
        response = await client.get("/api/x", headers={"Host": "evil.example"})

    assert response.status_code == 403
    assert response.headers["content-type"] == "text/plain"
    assert response.text == "/api/x 403 host_not_allowed"
    assert behind.calls == 0


async def test_a_star_allows_every_host() -> None:
    behind = Behind()
    async with guard_client(behind, allowed_hosts=["*"]) as client:
        response = await client.get("/api/x", headers={"Host": "anything.example"})

    assert response.status_code == 200
    assert behind.calls == 1


async def test_a_body_within_the_limit_passes_whole() -> None:
    behind = Behind()
    async with guard_client(behind, max_body=10) as client:
        response = await client.post("/api/x", content=b"0123456789")

    assert response.status_code == 200
    assert response.content == b"0123456789"


async def test_a_declared_length_over_the_limit_never_reaches_the_app() -> None:
    behind = Behind()
    async with guard_client(behind, max_body=10) as client:
        response = await client.post("/api/x", content=b"01234567890")

    assert response.text == "/api/x 413 body_too_large"
    assert behind.calls == 0


async def test_the_admin_session_cookie_opens_the_admin_surface() -> None:
    behind = Behind()
    async with guard_client(behind) as client:
        forged = {"Cookie": f"{SESSION_COOKIE}=forged"}
        refused = await client.get("/api/v1/admin/stats", headers=forged)
        session = {"Cookie": f"{SESSION_COOKIE}={ADMIN.session}"}
        opened = await client.get("/api/v1/admin/stats", headers=session)

    assert refused.text == "/api/v1/admin/stats 401 unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert opened.status_code == 200
    assert behind.calls == 1


async def test_a_token_in_the_url_works_only_for_reading() -> None:
    behind = Behind()
    async with guard_client(behind) as client:
        posted = await client.post("/api/v1/admin/keys", params={"token": TOKEN})
        got = await client.get("/dashboard", params={"token": TOKEN, "a": "1"})

    assert posted.status_code == 401
    assert got.status_code == 303
    assert got.headers["location"] == "/dashboard?a=1"
    assert f"{SESSION_COOKIE}={ADMIN.session};" in got.headers["set-cookie"]
    assert "Secure" not in got.headers["set-cookie"]
    assert behind.calls == 0


async def test_lifespan_messages_pass_the_guard_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    guard = Guard(app, render=render, admin=ADMIN)
    await guard({"type": "lifespan"}, _never, _never)

    assert seen == ["lifespan"]


async def _never(*args: Any) -> Any:
    raise AssertionError("the guard must not receive or send for a lifespan scope")


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("example.com:5000", "example.com"),
        ("EXAMPLE.com", "example.com"),
        ("[::1]:5000", "[::1]"),
        ("[::1]", "[::1]"),
        ("::1", "::1"),
        (" localhost ", "localhost"),
    ],
)
def test_host_name_drops_the_port_only(header: str, name: str) -> None:
    assert host_name(header) == name


def test_session_of_reads_the_cookie_and_survives_a_bad_header() -> None:
    assert session_of(f"a=1; {SESSION_COOKIE}=abc") == "abc"
    assert session_of("a=1") is None
    assert session_of("bad name\x00=1") is None


@pytest.mark.parametrize(
    ("path", "admin"),
    [
        ("/", True),
        ("/dashboard", True),
        ("/api/v1/admin/dashboard", True),
        ("/api/v1/admin", True),
        ("/api/v1/ai/ask_sync", False),
        ("/static/dashboard.html", False),
        ("/health", False),
    ],
)
def test_the_admin_surface_is_the_page_and_the_admin_api(path: str, admin: bool) -> None:
    assert is_admin_path(path) is admin
