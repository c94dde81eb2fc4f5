"""Where model loads go: records that say which call paid for a load and what it unloaded, the
residency view's numbers and advice, and the view in real headless Chromium. The stand-in
holds models on a memory budget (tests/ollama_standin.py --memory): room for one of the two."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser import ARTIFACTS, chromium, watched_page
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import unique
from tests.ollama_standin import StandIn, _Model, start_standin

pytestmark = [pytest.mark.server, pytest.mark.browser]

LOAD = 0.2


@pytest.fixture(scope="module")
def tight() -> Iterator[StandIn]:
    """An Ollama with room for one of llama3 and qwen at a time."""
    sizes = [_Model.make(name).size for name in ("llama3", "qwen")]
    standin = start_standin(models=["llama3", "qwen"], memory=max(sizes) + 1, load_seconds=LOAD)
    try:
        yield standin
    finally:
        standin.stop()


def chat(client: httpx.Client, model: str, project: str, **options: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "model": model,
        "stream": False,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if options:
        body["options"] = options
    response = client.post("/api/chat", json=body, headers={"X-Project": project})
    assert response.status_code == 200, response.text
    return response


def streamed(client: httpx.Client, model: str, project: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "[[tokens=3]]"}]}
    with client.stream("POST", "/api/chat", json=body, headers={"X-Project": project}) as r:
        assert r.status_code == 200
        r.read()


def oldest_first(client: httpx.Client, project: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(
        "/api/v1/admin/dashboard", params={"project": project}
    ).json()
    return found[::-1]


def test_records_and_the_view_say_where_loads_went(tight: StandIn, tmp_path: Path) -> None:
    project = unique("residency")
    # Health checks far apart: what the view knows of loads comes from the calls themselves.
    gateway = start_gateway(tmp_path / "data", "--ollama", tight.url, "--health-interval", "60")
    with gateway, gateway.client(timeout=30) as client:
        # llama3 and qwen, alternately: each load unloads the other.
        for model in ("llama3", "qwen", "llama3", "qwen", "llama3"):
            chat(client, model, project)
        chat(client, "llama3", project)  # warm
        streamed(client, "qwen", project)  # a stream that loads, and unloads llama3
        # The same model, loaded with another context: a reload the caller's options caused.
        for context in (8192, 2048, 8192):
            chat(client, "qwen", project, num_ctx=context)
        found = oldest_first(client, project)
        view = client.get("/api/v1/admin/residency").json()
        metrics = client.get("/metrics").text
        _look(gateway)
        logs = gateway.logs()

    assert [(r["model_name"], r["cold_start"], r["evicted"]) for r in found] == [
        ("llama3", True, None),
        ("qwen", True, "llama3:latest"),
        ("llama3", True, "qwen:latest"),
        ("qwen", True, "llama3:latest"),
        ("llama3", True, "qwen:latest"),
        ("llama3", False, None),
        ("qwen", True, "llama3:latest"),
        ("qwen", True, "qwen:latest"),
        ("qwen", True, "qwen:latest"),
        ("qwen", True, "qwen:latest"),
    ]
    assert all(r["load_seconds"] >= LOAD for r in found if r["cold_start"])
    (upstream,) = view["upstreams"]
    assert upstream["loaded"] == ["qwen:latest"]
    pairs = {(p["loaded"], p["evicted"]): p["times"] for p in upstream["pairs"]}
    assert pairs == {("qwen:latest", "llama3:latest"): 3, ("llama3:latest", "qwen:latest"): 2}
    loads = {m["model"]: m["loads"] for m in upstream["models"]}
    assert loads == {"llama3:latest": 3, "qwen:latest": 6}
    (reloads,) = upstream["option_reloads"]
    assert (reloads["key"], reloads["model"], reloads["times"]) == ("admin", "qwen:latest", 3)
    assert reloads["load_seconds"] >= 3 * LOAD - 1e-6  # 3 x 0.2 in floats is above 0.6
    advice = upstream["advice"]
    assert len(advice) == 2
    assert any(
        a.startswith(
            "llama3:latest and qwen:latest evicted each other 5 times in the last hour on ollama"
        )
        for a in advice
    )
    assert any("'admin' made ollama reload qwen:latest 3 times" in a for a in advice)
    kinds = [(e["model"].split(":")[0], e["event"]) for e in upstream["events"]]
    assert ("llama3", "unloaded") in kinds
    assert ("qwen", "reloaded") in kinds
    # The same in Prometheus' numbers.
    assert (
        'ollama_host_cold_starts_total{gen_ai_request_model="qwen:latest",upstream="ollama"} 6.0'
        in metrics
    )
    assert (
        'ollama_host_evictions_total{gen_ai_request_model="llama3:latest",upstream="ollama"} 3.0'
        in metrics
    )
    assert "Traceback" not in logs


def _look(gateway: Gateway) -> None:
    """The view in real headless Chromium: the advice, a lane per model, the tables."""
    with chromium() as browser, watched_page(browser) as page:
        page.goto(f"{gateway.url}/?token={gateway.admin_token}")
        section = page.locator("#residency-section")
        expect(section).to_have_attribute("data-loaded", "true", timeout=15_000)
        box = section.locator('article[data-upstream="ollama"]')
        expect(box.locator(".advice")).to_have_count(2)
        expect(box.locator(".advice").first).to_contain_text("evicted each other 5 times")
        expect(box.locator(".residency-lanes li")).to_have_text(["llama3:latest", "qwen:latest"])
        assert box.locator("svg.residency-timeline rect").count() >= 4
        expect(box.locator("table").nth(1)).to_contain_text("llama3")
        section.screenshot(path=ARTIFACTS / "residency.png")
