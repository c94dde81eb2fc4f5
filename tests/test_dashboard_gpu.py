"""The dashboard's GPU headline in real headless Chromium: GPU time, its loading share and its
cost, by project, key, model and upstream, against a gateway with two priced and unpriced
upstreams (both the Ollama stand-in) and two keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import ARTIFACTS, LAPTOP, PHONE, watched_page
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import ask
from tests.ollama_standin import StandIn
from tests.test_dashboard import open_dashboard

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("gpu-dashboard") / "data"
    with start_gateway(
        data,
        "--upstream",
        f"gpu1={standin.url},gpus=1,cost=2.50,models=llama3",
        "--upstream",
        f"gpu2={standin.url},gpus=2,models=qwen",
    ) as server:
        with server.client() as admin:
            keys = {}
            for label, project in (("research", "alpha"), ("batch", "beta")):
                made = admin.post("/api/v1/admin/keys", json={"label": label, "project": project})
                assert made.status_code == 201, made.text
                keys[label] = made.json()["key"]
        for label, model, content in (
            ("research", "llama3", "a cold start [[load=0.4]] [[tokens=4]] [[delay=0.02]]"),
            ("research", "llama3", "warm [[tokens=6]] [[delay=0.02]]"),
            ("batch", "qwen", "batch one [[tokens=20]] [[delay=0.01]]"),
            ("batch", "qwen", "batch two [[tokens=20]] [[delay=0.01]]"),
            ("batch", "llama3", "batch three [[tokens=8]] [[delay=0.02]]"),
        ):
            with server.client(admin=False) as client:
                answered = client.post(
                    "/api/v1/ai/ask_sync",
                    json=ask(model, content),
                    headers={"Authorization": f"Bearer {keys[label]}"},
                )
                assert answered.status_code == 200, answered.text
        yield server
    assert "Traceback" not in server.logs(), server.logs()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with watched_page(browser) as page:
        yield page


def api_stats(site: Gateway, **params: str) -> dict[str, Any]:
    with site.client() as client:
        response = client.get("/api/v1/admin/stats", params=params)
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def test_the_headline_is_gpu_time_as_the_api_says(page: Page, site: Gateway) -> None:
    stats = api_stats(site)
    totals = stats["totals"]
    assert totals["gpu_seconds"] > 0.4  # the cold start alone loaded for 0.4 s
    assert 0 < totals["gpu_load_seconds"] < totals["gpu_seconds"]
    assert totals["cost"] > 0  # gpu1 has a price

    open_dashboard(page, site)

    expect(page.locator("#g-total")).to_have_attribute("data-value", str(totals["gpu_seconds"]))
    expect(page.locator("#g-load")).to_have_attribute("data-value", str(totals["gpu_load_seconds"]))
    expect(page.locator("#g-cost")).to_have_attribute("data-value", str(totals["cost"]))
    share = round(totals["gpu_load_seconds"] / totals["gpu_seconds"] * 100)
    expect(page.locator("#g-load")).to_contain_text(f"{share}%")
    # The GPU section comes before the token totals: it is the headline.
    order = page.evaluate(
        "document.getElementById('gpu').compareDocumentPosition("
        "document.querySelector('section.totals'))"
    )
    assert order & 4  # DOCUMENT_POSITION_FOLLOWING


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ("gpu-by-key", "by_key"),
        ("gpu-by-project", "by_project"),
        ("gpu-by-model", "by_model"),
        ("gpu-by-upstream", "by_upstream"),
    ],
)
def test_each_breakdown_shows_the_apis_gpu_time_heaviest_first(
    page: Page, site: Gateway, table: str, field: str
) -> None:
    rows = api_stats(site)[field]
    expected = sorted(rows, key=lambda r: -r["gpu_seconds"])

    open_dashboard(page, site)

    shown = page.locator(f"#{table} tbody tr")
    expect(shown).to_have_count(len(expected))
    for i, row in enumerate(expected):
        expect(shown.nth(i)).to_have_attribute("data-key", row["key"])
        expect(shown.nth(i).locator("td.gpu-seconds")).to_have_attribute(
            "data-value", str(row["gpu_seconds"])
        )


def test_keys_and_upstreams_are_who_and_where(page: Page, site: Gateway) -> None:
    stats = api_stats(site)
    by_key = {r["key"]: r for r in stats["by_key"]}
    by_upstream = {r["key"]: r for r in stats["by_upstream"]}
    assert set(by_key) == {"research", "batch"}
    assert set(by_upstream) == {"gpu1", "gpu2"}
    assert by_upstream["gpu1"]["cost"] > 0
    assert by_upstream["gpu2"]["cost"] == 0  # no price: never a made-up one
    # Only the research key's cold start loaded a model.
    assert by_key["research"]["gpu_load_seconds"] > 0.39
    assert by_key["batch"]["gpu_load_seconds"] < 0.01

    open_dashboard(page, site)

    gpu2 = page.locator("#gpu-by-upstream tbody tr[data-key=gpu2]")
    expect(gpu2.locator("td").nth(5)).to_have_text("–")


def test_a_row_filters_the_page_by_its_project(page: Page, site: Gateway) -> None:
    open_dashboard(page, site)

    page.locator("#gpu-by-project tbody tr[data-key=beta]").click()

    expect(page.locator("#filters input[name=project]")).to_have_value("beta")
    assert "project=beta" in page.url
    beta = api_stats(site, project="beta")["totals"]
    expect(page.locator("#g-total")).to_have_attribute("data-value", str(beta["gpu_seconds"]))
    expect(page.locator("#gpu-by-project tbody tr")).to_have_count(1)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize(("name", "viewport"), [("laptop", LAPTOP), ("phone", PHONE)])
def test_screenshots_of_the_gpu_headline(
    browser: Browser, site: Gateway, name: str, viewport: Any, scheme: Any
) -> None:
    context = browser.new_context(viewport=viewport, color_scheme=scheme)
    page = context.new_page()
    try:
        open_dashboard(page, site)
        expect(page.locator("#gpu-by-key tbody tr").first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=ARTIFACTS / f"gpu-{name}-{scheme}.png", full_page=True)
    finally:
        context.close()


def test_the_calls_detail_shows_its_gpu_time(page: Page, site: Gateway) -> None:
    with site.client() as client:
        response = client.get("/api/v1/admin/dashboard", params={"limit": 1})
    (record,) = response.json()
    assert record["gpu_seconds"] is not None

    open_dashboard(page, site)
    page.locator("#calls tbody tr").first.click()

    expect(page.locator("#d-meta")).to_contain_text("GPU time")


def test_the_gpu_section_needs_no_network(site: Gateway) -> None:
    # The module the section is drawn by is served like the page's other scripts.
    script = httpx.get(site.url + "/static/gpu.js", timeout=10)
    assert script.status_code == 200
    assert "export function renderGpu" in script.text
