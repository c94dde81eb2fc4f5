"""routes/page.py: the dashboard page, served behind the admin gate under a strict policy."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest

from app import MODULES
from routes.page import STATIC
from tests.asgi import Local
from tests.helpers import assert_error

pytestmark = pytest.mark.anyio


async def test_the_page_is_served_with_a_strict_policy(aclient: httpx.AsyncClient) -> None:
    response = await aclient.get(
        "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/dashboard.js">' in response.text


async def test_the_page_is_the_same_at_both_addresses(aclient: httpx.AsyncClient) -> None:
    browser = {"Accept": "text/html,*/*;q=0.8"}  # `/` is the page only for a browser

    root = await aclient.get("/", headers=browser)
    dashboard = await aclient.get("/dashboard")

    assert root.status_code == dashboard.status_code == 200
    assert root.content == dashboard.content
    assert root.headers["referrer-policy"] == dashboard.headers["referrer-policy"] == "no-referrer"


async def test_head_of_the_page_has_its_headers_and_no_body(aclient: httpx.AsyncClient) -> None:
    response = await aclient.head("/dashboard")

    assert response.status_code == 200
    assert response.content == b""
    assert "script-src 'self'" in response.headers["content-security-policy"]


async def test_the_page_needs_the_admin_token(local: Local) -> None:
    async with local.client(admin=False) as browser:
        response = await browser.get("/dashboard")

    assert_error(response, 401, "unauthorized")


class _FrontOptions(HTMLParser):
    """The values of the dashboard's front filter (`<select name="front">`)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "select":
            self.inside = dict(attrs).get("name") == "front"
        elif tag == "option" and self.inside:
            self.values.append(dict(attrs).get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self.inside = False


def test_the_front_filter_lists_every_front_the_app_has() -> None:
    """The filter's one list of fronts is the app's: a front added to MODULES without its
    option (or an option left for a front that went) fails here."""
    parser = _FrontOptions()
    parser.feed((STATIC / "dashboard.html").read_text())

    fronts = [m.FRONT for m in MODULES if hasattr(m, "FRONT")]
    assert parser.values[0] == ""  # any
    assert sorted(parser.values[1:]) == sorted(fronts)
    assert "anthropic" in fronts
