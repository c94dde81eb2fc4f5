"""routes/page.py: the dashboard page, served behind the admin gate under a strict policy."""

from __future__ import annotations

import httpx
import pytest

from tests.asgi import Local
from tests.helpers import assert_error

pytestmark = pytest.mark.anyio


async def test_the_page_is_served_with_a_strict_policy(aclient: httpx.AsyncClient) -> None:
    response = await aclient.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/dashboard.js">' in response.text


@pytest.mark.parametrize("path", ["/", "/dashboard"])
async def test_the_page_is_the_same_at_both_addresses_and_answers_head(
    aclient: httpx.AsyncClient, path: str
) -> None:
    page = await aclient.get(path)
    head = await aclient.head(path)

    assert page.status_code == head.status_code == 200
    assert page.headers["referrer-policy"] == "no-referrer"
    assert head.content == b""
    assert head.headers["content-security-policy"] == page.headers["content-security-policy"]


async def test_the_page_needs_the_admin_token(local: Local) -> None:
    async with local.client(admin=False) as browser:
        response = await browser.get("/dashboard")

    assert_error(response, 401, "unauthorized")
