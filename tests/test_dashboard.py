"""The dashboard page in real headless Chromium, against a gateway and the Ollama stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from access.guard import SESSION_COOKIE
from tests.browser import ARTIFACTS, LAPTOP, PHONE, watched_page
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import ask, calls_with, records, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.browser

# A tag and a prompt that would run script if the page ever treated them as HTML.
EVIL_TAG = "<img src=x onerror=window.__pwned=1>"
EVIL_PROMPT = "<script>window.__pwned=2</script><b>bold?</b> [[tricky=1]]"


@pytest.fixture(scope="module")
def site(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own, so the page's totals are exactly these tests' calls."""
    data = tmp_path_factory.mktemp("dashboard") / "data"
    with start_gateway(data, "--ollama", standin.url, "--keepalive", "0.2") as server:
        with server.client() as client:
            for body in (
                ask("llama3", "alpha [[tokens=3]]", project="alpha", process_id="batch"),
                ask("qwen", "beta [[tokens=4]]", project="beta", subprocess_id="s1"),
                ask("llama3", "gamma [[status=500]]", project="alpha"),
                ask("llama3", EVIL_PROMPT, project=EVIL_TAG, template="<i>system</i>"),
            ):
                client.post("/api/v1/ai/ask_sync", json=body)
        yield server
    assert "Traceback" not in server.logs(), server.logs()


@pytest.fixture
def client(site: Gateway) -> Iterator[httpx.Client]:
    with site.client() as client:
        yield client


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab; any script error on the page fails the test."""
    with watched_page(browser) as page:
        yield page


def open_dashboard(page: Page, site: Gateway, query: str = "") -> None:
    """Open the page as its user does: once with ?token=, which becomes a cookie."""
    if not any(cookie["name"] == SESSION_COOKIE for cookie in page.context.cookies()):
        page.goto(f"{site.url}/?token={site.admin_token}")
        assert "token=" not in page.url
    page.goto(f"{site.url}/{query}")
    expect(page.locator("#live")).to_have_class("live on")


def api_totals(client: httpx.Client, **params: str) -> dict[str, Any]:
    response = client.get("/api/v1/admin/stats", params=params)
    assert response.status_code == 200
    totals: dict[str, Any] = response.json()["totals"]
    return totals


def wait_for_record(client: httpx.Client, project: str, status: str) -> dict[str, Any]:
    """The call's record once it has the given status (a stream's is written when it ends)."""
    deadline = time.monotonic() + 10
    while True:
        found = records(client, project=project)
        if found and found[0]["status"] == status:
            return found[0]
        assert time.monotonic() < deadline, f"no {status} record for {project}: {found}"
        time.sleep(0.05)


def test_totals_match_the_api(page: Page, site: Gateway, client: httpx.Client) -> None:
    totals = api_totals(client)
    assert totals["calls"] >= 4

    open_dashboard(page, site)

    cards = {
        "calls": "#t-calls",
        "input_tokens": "#t-input",
        "output_tokens": "#t-output",
        "model_seconds": "#t-model",
        "errors": "#t-errors",
        "cancelled": "#t-cancelled",
    }
    for field, selector in cards.items():
        expect(page.locator(selector)).to_have_attribute("data-value", str(totals[field]))
    expect(page.locator("#calls tbody tr")).to_have_count(totals["calls"])
    expect(page.locator("#by-model tbody tr")).to_have_count(2)


def test_a_filter_narrows_the_table_and_stays_in_the_url(page: Page, site: Gateway) -> None:
    open_dashboard(page, site)

    page.fill("#filters input[name=project]", "alpha")
    page.press("#filters input[name=project]", "Enter")

    rows = page.locator("#calls tbody tr")
    expect(rows).to_have_count(2)
    for text in rows.all_inner_texts():
        assert "alpha" in text
    expect(page.locator("#t-calls")).to_have_attribute("data-value", "2")
    assert "project=alpha" in page.url
    export = page.get_attribute("#export-csv", "href")
    assert export is not None
    assert "project=alpha" in export
    assert "format=csv" in export
    # The URL is the view: opening it elsewhere shows the same thing.
    shared = page.context.new_page()
    shared.goto(page.url)
    expect(shared.locator("#filters input[name=project]")).to_have_value("alpha")
    expect(shared.locator("#calls tbody tr")).to_have_count(2)
    shared.close()


def test_clearing_a_filter_brings_every_call_back(
    page: Page, site: Gateway, client: httpx.Client
) -> None:
    everything = api_totals(client)["calls"]
    open_dashboard(page, site)
    expect(page.locator("#calls tbody tr")).to_have_count(everything)
    page.select_option("#filters select[name=status]", "error")
    expect(page.locator("#calls tbody tr")).to_have_count(1)

    page.click("#filters button[type=reset]")

    expect(page.locator("#calls tbody tr")).to_have_count(everything)
    expect(page.locator("#t-calls")).to_have_attribute("data-value", str(everything))
    assert "status=" not in page.url


def test_a_breakdown_row_filters_by_its_key(page: Page, site: Gateway) -> None:
    open_dashboard(page, site)

    page.locator("#by-model tbody tr", has_text="qwen").click()

    expect(page.locator("#calls tbody tr")).to_have_count(1)
    expect(page.locator("#filters input[name=model]")).to_have_value("qwen")
    assert "model=qwen" in page.url


def test_new_calls_appear_without_a_reload(page: Page, site: Gateway, client: httpx.Client) -> None:
    open_dashboard(page, site)
    page.evaluate("window.__sameDocument = true")
    project = unique("live")

    client.post("/api/v1/ai/ask_sync", json=ask(content="[[tokens=2]]", project=project))

    expect(page.locator("#calls tbody tr").first).to_contain_text(project)
    assert page.evaluate("window.__sameDocument") is True


def test_a_long_call_that_ends_after_newer_ones_still_appears(
    page: Page, site: Gateway, client: httpx.Client, standin: StandIn
) -> None:
    # A call's id is taken when it starts, its record lands when it ends: the slow call
    # below has the older id but arrives second, and must not be skipped by the poller.
    open_dashboard(page, site)
    slow, fast = unique("slow"), unique("fast")
    with site.client() as other, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            other.post,
            "/api/v1/ai/ask_sync",
            json=ask(content=f"{slow} [[tokens=4]] [[delay=2]]", project=slow),
        )
        standin.wait_for(lambda calls: bool(calls_with(calls, slow)))
        client.post("/api/v1/ai/ask_sync", json=ask(content="[[tokens=1]]", project=fast))
        expect(page.locator("#calls tbody tr", has_text=fast)).to_have_count(1)
        assert pending.result().status_code == 200

    expect(page.locator("#calls tbody tr", has_text=slow)).to_have_count(1)
    ids = page.locator("#calls tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert ids == sorted(ids, reverse=True)


def test_stored_html_stays_inert(page: Page, site: Gateway) -> None:
    open_dashboard(page, site)

    row = page.locator("#calls tbody tr", has_text=EVIL_TAG)
    expect(row).to_have_count(1)
    row.click()

    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    messages = dialog.locator(".message pre")
    expect(messages).to_have_text(["<i>system</i>", EVIL_PROMPT])
    expect(dialog.locator("#d-output")).to_contain_text("<img src=x onerror=alert(1)>")
    expect(page.locator("#by-project tbody tr", has_text=EVIL_TAG)).to_have_count(1)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    # Not even inert markup: the page has no <img>, <script> or <b> made from the data.
    assert page.evaluate("document.querySelectorAll('main img, dialog img, main b').length") == 0
    scripts = page.evaluate("[...document.scripts].map((s) => new URL(s.src).pathname)")
    assert scripts == [
        "/static/theme.js",
        "/static/dashboard.js",
        "/static/queue.js",
        "/static/residency.js",
    ]
    page.screenshot(path=ARTIFACTS / "detail-untrusted.png")


def test_playground_streams_the_answer_token_by_token(
    page: Page, site: Gateway, client: httpx.Client
) -> None:
    open_dashboard(page, site)
    project = unique("pg")
    page.select_option("#playground select[name=agent]", "llama3:latest")
    page.fill("#playground input[name=project]", project)
    page.fill("#playground textarea[name=content]", "count [[tokens=12]] [[delay=0.1]]")

    page.click("#pg-send")

    # Seen while the answer is still arriving: some tokens, not all.
    partial = page.wait_for_function(
        """() => {
            const text = document.getElementById('pg-output').textContent;
            return text.length > 0 && !text.includes('w11') ? text : null;
        }"""
    ).json_value()
    whole = "".join(f"w{i} " for i in range(12))
    expect(page.locator("#pg-output")).to_have_text(whole)
    assert whole.startswith(partial)
    assert len(partial) < len(whole)
    expect(page.locator("#pg-status")).to_contain_text("done")
    expect(page.locator("#pg-stop")).to_be_disabled()
    # The call it made is in the table without a reload.
    expect(page.locator("#calls tbody tr").first).to_contain_text(project)
    assert wait_for_record(client, project, "ok")["output"] == whole
    page.locator(".playground").screenshot(path=ARTIFACTS / "playground.png")


def start_long_answer(page: Page, site: Gateway, project: str) -> None:
    open_dashboard(page, site)
    page.fill("#playground input[name=project]", project)
    page.fill("#playground textarea[name=content]", "[[tokens=300]] [[delay=0.05]]")
    expect(page.locator("#pg-send")).to_be_enabled()
    page.press("#playground textarea[name=content]", "Control+Enter")
    expect(page.locator("#pg-output")).to_contain_text("w1 ")


def assert_upstream_closed(standin: StandIn) -> None:
    """Ollama was told to stop too (and the shared stand-in is left with nothing open)."""
    deadline = time.monotonic() + 10
    while standin.open_streams():
        assert time.monotonic() < deadline, "the stand-in still has a stream open"
        time.sleep(0.05)


def test_stop_ends_the_stream(
    page: Page, site: Gateway, client: httpx.Client, standin: StandIn
) -> None:
    project = unique("stop")
    start_long_answer(page, site, project)

    page.click("#pg-stop")

    expect(page.locator("#pg-status")).to_have_text("stopped")
    record = wait_for_record(client, project, "cancelled")
    assert record["output_tokens"] < 300
    assert_upstream_closed(standin)


def test_leaving_the_page_ends_the_stream(page: Page, site: Gateway, client: httpx.Client) -> None:
    project = unique("leave")
    start_long_answer(page, site, project)

    page.goto("about:blank")

    record = wait_for_record(client, project, "cancelled")
    assert record["output_tokens"] < 300


def test_theme_toggle_is_remembered(page: Page, site: Gateway) -> None:
    open_dashboard(page, site)
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")

    page.click("#theme")  # auto -> light
    page.click("#theme")  # light -> dark
    page.reload()

    expect(page.locator("#theme")).to_have_text("Theme: dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light


def test_the_toggle_overrides_a_dark_system(browser: Browser, site: Gateway) -> None:
    context = browser.new_context(color_scheme="dark")
    page = context.new_page()
    try:
        open_dashboard(page, site)
        background = "getComputedStyle(document.body).backgroundColor"
        system_dark = page.evaluate(background)
        page.click("#theme")  # auto -> light
        expect(page.locator("#theme")).to_have_text("Theme: light")
        chosen_light = page.evaluate(background)
        page.click("#theme")  # light -> dark
        chosen_dark = page.evaluate(background)
    finally:
        context.close()

    assert system_dark == chosen_dark == "rgb(17, 20, 24)"
    assert chosen_light == "rgb(246, 247, 249)"


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize(("name", "viewport"), [("laptop", LAPTOP), ("phone", PHONE)])
def test_screenshots_fit_the_screen(
    browser: Browser,
    site: Gateway,
    name: str,
    viewport: ViewportSize,
    scheme: Literal["light", "dark"],
) -> None:
    context = browser.new_context(viewport=viewport, color_scheme=scheme)
    page = context.new_page()
    try:
        open_dashboard(page, site)
        expect(page.locator("#calls tbody tr").first).to_be_visible()
        # Wide tables scroll inside their panels; the page itself never scrolls sideways.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=ARTIFACTS / f"dashboard-{name}-{scheme}.png", full_page=True)
        page.locator("#calls tbody tr").first.click()
        box = page.locator("#detail").bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= viewport["width"]
        page.screenshot(path=ARTIFACTS / f"detail-{name}-{scheme}.png")
    finally:
        context.close()


# Last in the module: its call on Ollama's front changes the totals the tests above count.
def test_front_endpoint_and_upstream_break_down_and_filter(
    page: Page, site: Gateway, client: httpx.Client
) -> None:
    project = unique("front")
    response = httpx.post(
        site.url + "/api/chat",
        json={"model": "mistral", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        headers={"X-Project": project},
    )
    assert response.status_code == 200
    wait_for_record(client, project, "ok")
    open_dashboard(page, site)

    expect(page.locator("#by-endpoint tbody tr", has_text="/api/chat")).to_have_count(1)
    expect(page.locator("#by-upstream tbody tr", has_text="ollama")).to_have_count(1)
    page.locator("#by-front tbody tr", has_text="ollama").click()

    expect(page.locator("#calls tbody tr")).to_have_count(1)
    expect(page.locator("#calls tbody tr td").nth(3)).to_have_text("ollama")
    expect(page.locator("#filters select[name=front]")).to_have_value("ollama")
    assert "front=ollama" in page.url
    page.locator("#calls tbody tr").click()
    expect(page.locator("#d-meta")).to_contain_text("ollama /api/chat")
