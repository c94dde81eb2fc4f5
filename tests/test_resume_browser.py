"""A browser's EventSource through a connection cut mid-answer: headless Chromium reconnects by
itself with `Last-Event-ID`, and the page gets the whole answer exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Route

from tests.browser import ARTIFACTS, chromium
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import calls_with, unique, wait_record
from tests.ollama_standin import StandIn
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.browser, pytest.mark.faults]

TOKENS = 20

# The page opens an EventSource with a stream ticket (an EventSource cannot send a key), as a
# page of the seed's API does, and shows every token as it comes. It keeps what it saw: each
# event's id, and how often the connection opened and failed.
PAGE = """<!doctype html><meta charset="utf-8"><title>resumed</title>
<style>body{font:16px system-ui;margin:2em} #out{white-space:pre-wrap;border:1px solid #888;
padding:1em;min-height:3em} #log{color:#555;font-size:13px}</style>
<h1>An answer through a cut connection</h1><div id="state">asking...</div>
<div id="out"></div><pre id="log"></pre>
<script>
window.seen = []; window.opens = 0; window.drops = 0; window.finished = false;
const out = document.getElementById("out"), state = document.getElementById("state");
const log = (text) => { document.getElementById("log").textContent += text + "\\n"; };
const es = new EventSource("/api/v1/ai/ask_async?" + new URLSearchParams(QUERY));
es.onopen = () => { window.opens += 1; log("open #" + window.opens); };
es.addEventListener("start", (e) => { window.seen.push([e.lastEventId, "start", ""]); });
es.addEventListener("token", (e) => {
  const text = JSON.parse(e.data).content;
  window.seen.push([e.lastEventId, "token", text]);
  out.textContent += text;
});
es.addEventListener("done", (e) => {
  window.seen.push([e.lastEventId, "done", ""]);
  es.close();
  state.textContent = "done: " + JSON.parse(e.data).output_tokens + " tokens";
  window.finished = true;
});
es.addEventListener("error", (e) => {
  if (e.data) {
    es.close();
    state.textContent = "error: " + e.data;
    window.finished = true;
    return;
  }
  window.drops += 1;
  log("connection lost after event " + window.seen.length + "; the browser reconnects");
});
</script>"""


@pytest.fixture
def gateway_behind_proxy(standin: StandIn, tmp_path: Path) -> Iterator[tuple[Gateway, TcpProxy]]:
    with (
        start_gateway(tmp_path / "data", "--ollama", standin.url, "--keepalive", "0.2") as gateway,
        TcpProxy("127.0.0.1", gateway.port) as proxy,
    ):
        yield gateway, proxy
    assert "Traceback" not in gateway.logs(), gateway.logs()


def test_a_page_gets_the_whole_answer_once_through_a_cut_connection(
    gateway_behind_proxy: tuple[Gateway, TcpProxy], standin: StandIn
) -> None:
    gateway, proxy = gateway_behind_proxy
    marker, project = unique("browser"), unique()
    origin = f"http://127.0.0.1:{proxy.port}"
    with gateway.client() as client:
        ticket = client.post("/api/v1/ai/tickets").json()["ticket"]
    query = {
        "agent": "llama3",
        "content": f"{marker} [[tokens={TOKENS}]] [[delay=0.25]]",
        "project": project,
        "ticket": ticket,
    }
    page_html = PAGE.replace("QUERY", f'"{httpx.QueryParams(query)}"')

    def serve(route: Route) -> None:
        route.fulfill(body=page_html, content_type="text/html; charset=utf-8")

    with chromium() as browser:
        page = browser.new_page()
        # The page comes from the proxy's origin, so the stream is same-origin, through it.
        page.route(f"{origin}/page", serve)
        page.goto(f"{origin}/page")
        page.wait_for_function("window.seen.filter((e) => e[1] === 'token').length >= 3")
        cut_after = len(page.evaluate("window.seen"))
        proxy.reset()  # the network blip: both sides see the connection reset
        page.wait_for_function("window.finished", timeout=30_000)
        page.screenshot(path=ARTIFACTS / "resume-browser.png")
        seen: list[list[Any]] = page.evaluate("window.seen")
        shown = page.inner_text("#out")
        opens, drops = page.evaluate("[window.opens, window.drops]")
        page.close()

    with gateway.client() as client:
        record = wait_record(client, project)
    assert cut_after < TOKENS + 1  # cut mid-answer
    assert (opens, drops) == (2, 1)  # it reconnected once, by itself
    assert [int(i) for i, _, _ in seen] == list(range(len(seen)))  # none twice, none skipped
    told = [
        kind for _, kind, _ in seen if kind != "loading"
    ]  # `loading` first if the stand-in had not loaded the model
    assert told == ["start"] + ["token"] * TOKENS + ["done"]
    answer = "".join(f"w{i} " for i in range(TOKENS))
    assert shown.strip() == answer.strip()
    assert len(calls_with(standin.calls(), marker)) == 1  # the model was asked once
    assert record["status"] == "ok"
    assert record["output"] == answer
