"""The dashboard's Queue panel and the playground's queue status, in real headless Chromium,
against a gateway whose one upstream (the Ollama stand-in) has cap=1."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import Page, expect

from access.guard import SESSION_COOKIE
from tests.browser import ARTIFACTS, chromium, watched_page
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import ask, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("queue") / "data"
    with start_gateway(data, "--upstream", f"box={standin.url},cap=1") as server:
        yield server
    assert "Traceback" not in server.logs(), server.logs()


@pytest.fixture
def page(site: Gateway) -> Iterator[Page]:
    with chromium() as browser, watched_page(browser) as page:
        page.goto(f"{site.url}/?token={site.admin_token}")
        assert any(c["name"] == SESSION_COOKIE for c in page.context.cookies())
        expect(page.locator("#live")).to_have_class("live on")
        yield page


def post(site: Gateway, body: dict[str, object], **headers: str) -> int:
    admin = {"Authorization": f"Bearer {site.admin_token}", **headers}
    response = httpx.post(f"{site.url}/api/v1/ai/ask_sync", json=body, headers=admin, timeout=60)
    return response.status_code


def test_the_queue_panel_shows_running_and_waiting_calls_live(page: Page, site: Gateway) -> None:
    expect(page.locator("#q-empty")).to_be_visible()
    first, second, third = unique("run"), unique("wait"), unique("batch")
    long = "[[tokens=40]] [[delay=0.1]]"
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(post, site, ask("llama3", long, project=first))
        expect(page.locator("#queue tbody tr")).to_have_count(1)
        batch = pool.submit(
            post, site, ask("llama3", "b", project=third), **{"X-Priority": "batch"}
        )
        expect(page.locator("#queue tbody tr")).to_have_count(2)
        chat = pool.submit(post, site, ask("llama3", "c", project=second))

        rows = page.locator("#queue tbody tr")
        expect(rows).to_have_count(3)
        # The interactive call is served before the batch one that came first.
        expect(rows.nth(0)).to_contain_text(first)
        expect(rows.nth(0)).to_contain_text("running")
        expect(rows.nth(1)).to_contain_text(second)
        expect(rows.nth(1)).to_contain_text("waiting")
        expect(rows.nth(2)).to_contain_text(third)
        expect(rows.nth(2)).to_contain_text("batch")
        expect(page.locator("#q-shared")).to_have_text("local")
        page.locator("#queue-panel").screenshot(path=ARTIFACTS / "queue-panel.png")

        assert [f.result() for f in (running, chat, batch)] == [200, 200, 200]
    expect(page.locator("#q-empty")).to_be_visible()


def test_the_playground_says_where_its_call_stands(page: Page, site: Gateway) -> None:
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, site, ask("llama3", "[[tokens=30]] [[delay=0.1]]"))
        expect(page.locator("#queue tbody tr")).to_have_count(1)
        page.fill("#playground textarea[name=content]", "hello [[tokens=3]]")
        expect(page.locator("#pg-send")).to_be_enabled()
        page.click("#pg-send")

        expect(page.locator("#pg-status")).to_contain_text("queued: position 1 (0 ahead)")
        page.locator(".playground").screenshot(path=ARTIFACTS / "playground-queued.png")
        assert running.result() == 200
    expect(page.locator("#pg-status")).to_contain_text("done")
