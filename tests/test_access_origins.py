"""access/origins.py and the Origin check of access/guard.py: which other sites' pages may
call which part of the gateway, with Ollama's default origins on the model API fronts.

The patterns, the policy and the guard in process; the same in real Chromium at the end
(a page on http://localhost:PORT streams an answer from the Ollama front with fetch; a page
on another origin is refused, and the console says why).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage

from access.guard import SESSION_COOKIE
from access.origins import OLLAMA_DEFAULTS, OriginError, Origins, parse_patterns
from app import MODULES, origin_policy
from ollama_host.settings import parse_settings
from tests.asgi import Local, in_process
from tests.browser import ARTIFACTS, chromium
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import aonly_record, ask, unique
from tests.ollama_standin import StandIn

CHAT = "/api/chat"
OPENAI_CHAT = "/v1/chat/completions"
SEED = "/api/v1/ai/ask_sync"
DASHBOARD = "/api/v1/admin/dashboard"
LOCAL_APP = "http://localhost:3000"


# -- patterns, as OLLAMA_ORIGINS takes them ----------------------------------------------------


def test_patterns_are_read_as_ollama_reads_its_origins() -> None:
    assert parse_patterns(" 'https://App.example/' ,, \"http://*.lan\" ,*", "--x") == (
        "https://app.example",
        "http://*.lan",
        "*",
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [("http://*.lan:*:*", "more than one `*`"), ("app.example", "is not an origin")],
)
def test_a_pattern_that_cannot_be_an_origin_is_refused_naming_it(text: str, why: str) -> None:
    with pytest.raises(OriginError, match=why) as refused:
        parse_patterns(f"https://ok.example,{text}", "--cors-origins")

    assert "--cors-origins" in str(refused.value)
    assert repr(text) in str(refused.value)


def test_a_bad_pattern_stops_the_start_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_settings(["--admin-origins", "ops.example"], {})

    assert stopped.value.code == 2
    assert "--admin-origins: 'ops.example' is not an origin" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("pattern", "origin", "matches"),
    [
        ("http://localhost:*", "http://localhost:3000", True),
        ("http://localhost:*", "http://localhost", False),
        ("http://localhost:*", "http://localhost.evil.example", False),
        ("https://*.example", "https://a.b.example", True),
        ("https://*.example", "https://example", False),
        ("https://*.example", "https://evil-example", False),
        ("chrome-extension://*", "chrome-extension://abcdef", True),
        ("http://a*a", "http://a", False),  # the head and the tail may not overlap
        ("https://app.example", "HTTPS://APP.EXAMPLE", True),
        ("*", "null", True),
    ],
)
def test_one_star_stands_for_any_run_of_characters(
    pattern: str, origin: str, matches: bool
) -> None:
    assert (origin in Origins([pattern])) is matches


def test_ollamas_defaults_are_all_there() -> None:
    # envconfig.AllowedOrigins() in ollama/ollama: three hosts, http and https, with and
    # without a port; and the desktop and editor schemes.
    origins = Origins(OLLAMA_DEFAULTS)
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        for scheme in ("http", "https"):
            assert f"{scheme}://{host}" in origins
            assert f"{scheme}://{host}:8080" in origins
    for origin in ("app://obsidian.md", "file://", "tauri://localhost", "vscode-file://x"):
        assert origin in origins
    assert "vscode-webview://1a2b3c" in origins
    assert "http://192.168.1.5:3000" not in origins
    assert "null" not in origins  # a file:// page in Chrome, which Ollama refuses too


# -- which part takes which origins ------------------------------------------------------------


def test_each_front_declares_its_origins_and_the_longest_prefix_wins() -> None:
    settings = parse_settings(["--cors-origins", "https://app.example"], {})
    # A front being written elsewhere opts in by declaring, beside its PREFIX:
    messages = ModuleType("messages")
    vars(messages).update(PREFIX="/v1/messages", BROWSER_ORIGINS=OLLAMA_DEFAULTS)
    # and one that declares nothing under a prefix that does takes only --cors-origins.
    quiet = ModuleType("quiet")
    vars(quiet).update(PREFIX="/v1/quiet/")
    policy = origin_policy(settings, [*MODULES, messages, quiet])

    def allowed(path: str, origin: str, *, admin: bool = False) -> bool:
        return origin in policy.rule_for(path, admin=admin).origins

    for path in (CHAT, "/api/tags", "/api", OPENAI_CHAT, "/v1/models", "/", "/v1/messages"):
        assert allowed(path, LOCAL_APP), path
        assert allowed(path, "https://app.example"), path
    for path in (SEED, "/api/v1/ai/tickets", "/health", "/openapi.json", "/v1/quiet/x"):
        assert not allowed(path, LOCAL_APP), path
        assert allowed(path, "https://app.example"), path
    assert not allowed(DASHBOARD, LOCAL_APP, admin=True)
    assert not allowed(DASHBOARD, "https://app.example", admin=True)


# -- the guard, in process ---------------------------------------------------------------------


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type, authorization",
    }


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[Local]:
    """The gateway in this process, with default settings."""
    async with in_process(tmp_path / "data") as local:
        yield local


@pytest.mark.anyio
@pytest.mark.parametrize("path", [CHAT, OPENAI_CHAT])
@pytest.mark.parametrize("origin", [LOCAL_APP, "http://127.0.0.1:8080", "app://obsidian.md"])
async def test_the_model_fronts_take_ollamas_default_origins(
    plain: Local, path: str, origin: str
) -> None:
    async with plain.client(admin=False) as client:
        checked = await client.options(path, headers=preflight(origin))
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        asked = await client.post(path, json={**body, "stream": False}, headers={"Origin": origin})

    assert checked.status_code == 204
    assert checked.headers["access-control-allow-origin"] == origin
    assert "POST" in checked.headers["access-control-allow-methods"]
    assert checked.headers["access-control-allow-headers"] == "content-type, authorization"
    assert asked.status_code == 200, asked.text
    assert asked.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-credentials" not in asked.headers


@pytest.mark.anyio
@pytest.mark.parametrize("path", [SEED, "/health", DASHBOARD])
async def test_the_rest_does_not_take_ollamas_defaults(plain: Local, path: str) -> None:
    async with plain.client() as client:
        checked = await client.options(path, headers=preflight(LOCAL_APP, "GET"))
        called = await client.get(path, headers={"Origin": LOCAL_APP})

    for refused in (checked, called):
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "origin_not_allowed"
        # What the browser's console will print.
        assert refused.headers["access-control-allow-origin"].startswith("origin-not-allowed:")


@pytest.mark.anyio
async def test_the_admin_cookie_never_rides_on_a_cross_origin_call(plain: Local) -> None:
    project = unique("cookie")
    session = plain.app.state.gateway.access.admin.session
    async with plain.client(admin=False) as browser:
        # As a page on another port of localhost asks with credentials: the browser sends
        # the SameSite=Strict cookie along, localhost being the same site.
        asked = await browser.post(
            "/api/generate",
            json={"model": "llama3", "prompt": "hi", "stream": False},
            headers={
                "Origin": LOCAL_APP,
                "Cookie": f"{SESSION_COOKIE}={session}",
                "X-Project": project,
            },
        )
    async with plain.client() as admin:
        record = await aonly_record(admin, project)

    assert asked.status_code == 200
    assert "access-control-allow-credentials" not in asked.headers
    assert record["key_label"] is None  # asked as anyone, never as the admin


@pytest.mark.anyio
async def test_a_star_for_asking_never_opens_the_admin_surface(tmp_path: Path) -> None:
    async with (
        in_process(tmp_path / "data", "--cors-origins", "*") as local,
        local.client() as client,
    ):
        asked = await client.post(SEED, json=ask(), headers={"Origin": "https://any.example"})
        read = await client.get(DASHBOARD, headers={"Origin": "https://any.example"})

    assert asked.status_code == 200
    assert asked.headers["access-control-allow-origin"] == "https://any.example"
    assert read.status_code == 403
    assert "--admin-origins" in read.json()["error"]["message"]
    assert read.headers["access-control-allow-origin"] == (
        "origin-not-allowed:the-admin-API-needs-it-in--admin-origins"
    )


@pytest.mark.anyio
async def test_an_admin_origin_reads_the_admin_surface_with_its_cookie(tmp_path: Path) -> None:
    ops = "https://ops.example"
    async with in_process(tmp_path / "data", "--admin-origins", "https://*.example") as local:
        session = local.app.state.gateway.access.admin.session
        async with local.client(admin=False) as browser:
            checked = await browser.options(DASHBOARD, headers=preflight(ops, "GET"))
            read = await browser.get(
                DASHBOARD, headers={"Origin": ops, "Cookie": f"{SESSION_COOKIE}={session}"}
            )
            asked = await browser.post(SEED, json=ask(), headers={"Origin": ops})

    assert checked.status_code == 204
    assert checked.headers["access-control-allow-credentials"] == "true"
    assert read.status_code == 200
    assert read.headers["access-control-allow-origin"] == ops
    assert read.headers["access-control-allow-credentials"] == "true"
    assert asked.status_code == 403  # the admin's origins are not the askers'


# -- in Chromium -------------------------------------------------------------------------------


class _Pages(http.server.BaseHTTPRequestHandler):
    """Serves one page, the same for every path, on whatever address it listens on."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def pages() -> Iterator[dict[str, str]]:
    """The page, served from http://localhost:PORT (one of Ollama's default origins) and from
    http://127.0.0.2:PORT (another origin, on loopback like everything here)."""
    servers = {
        "local": http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages),
        "other": http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Pages),
    }
    port = servers["local"].server_address[1]
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {
        "local": f"http://localhost:{port}/",
        "other": f"http://127.0.0.2:{servers['other'].server_address[1]}/",
        # The gateway's own host on another port: another origin of the same site, to which
        # the browser sends the gateway's SameSite=Strict admin cookie.
        "same-site": f"http://127.0.0.1:{port}/",
    }
    for server in servers.values():
        server.shutdown()
        server.server_close()


# The page: asks the Ollama front with fetch, as ollama-js does (JSON body, so a preflight),
# and shows each NDJSON line as it arrives.
PAGE = """<!doctype html><meta charset="utf-8"><title>a local app</title>
<style>body{font:16px system-ui;margin:2em} #out{white-space:pre-wrap;border:1px solid #888;
padding:1em;min-height:3em}</style>
<h1>A local app asking the gateway</h1><div id="state">asking...</div><div id="out"></div>
<script>
window.reads = 0;
window.done = (async () => {
  const out = document.getElementById("out"), state = document.getElementById("state");
  try {
    const response = await fetch("GATEWAY/api/chat", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: "llama3", stream: true,
        messages: [{role: "user", content: "count [[tokens=6]] [[delay=0.15]]"}]}),
    });
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let rest = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      window.reads += 1;
      rest += decoder.decode(value, {stream: true});
      const lines = rest.split("\\n");
      rest = lines.pop();
      for (const line of lines) {
        if (line) out.textContent += JSON.parse(line).message.content;
      }
    }
    state.textContent = "answered: " + response.status;
    return "answered " + response.status;
  } catch (error) {
    state.textContent = "refused: " + error;
    return "refused: " + error;
  }
})();
</script>"""


@pytest.fixture
def origin_gateway(standin: StandIn, tmp_path: Path) -> Iterator[Gateway]:
    with start_gateway(tmp_path / "data", "--ollama", standin.url) as gateway:
        yield gateway
    assert "Traceback" not in gateway.logs()


@pytest.mark.browser
def test_a_page_on_localhost_streams_from_the_ollama_front_and_another_origin_is_refused(
    origin_gateway: Gateway, pages: dict[str, str]
) -> None:
    _Pages.page = PAGE.replace("GATEWAY", origin_gateway.url).encode()
    results: dict[str, tuple[str, int, str, list[str]]] = {}
    with chromium() as browser:
        for name in ("local", "other"):
            url = pages[name]
            page = browser.new_page()
            console: list[str] = []

            def note(message: ConsoleMessage, into: list[str] = console) -> None:
                into.append(message.text)

            page.on("console", note)
            page.goto(url)
            outcome = page.evaluate("window.done")
            page.screenshot(path=ARTIFACTS / f"origins-{name}.png")
            results[name] = (
                outcome,
                page.evaluate("window.reads"),
                page.inner_text("#out"),
                console,
            )
            page.close()

    outcome, reads, shown, console = results["local"]
    assert outcome == "answered 200", console
    assert shown == "w0 w1 w2 w3 w4 w5 "
    assert reads >= 3  # streamed: the lines arrived apart, 0.15 s between them
    assert console == []
    outcome, reads, shown, console = results["other"]
    assert outcome == "refused: TypeError: Failed to fetch"
    assert (reads, shown) == (0, "")
    # The console says why, and what would let the page in.
    assert any(
        "blocked by CORS policy" in line and "origin-not-allowed:add-it-to--cors-origins" in line
        for line in console
    ), console


# A page on another port of the gateway's own host, opened by a browser that holds the admin
# cookie: it asks with credentials, so the browser sends the cookie along.
SAME_SITE_PAGE = """<!doctype html><meta charset="utf-8"><title>same site</title>
<pre id="out"></pre>
<script>
const out = document.getElementById("out");
const attempt = async (what, path, init) => {
  try {
    const response = await fetch("GATEWAY" + path, {credentials: "include", ...init});
    return what + ": " + response.status;
  } catch (error) {
    return what + ": " + error;
  }
};
window.done = (async () => {
  const lines = [
    await attempt("stats", "/api/v1/admin/stats", {}),
    // A simple request (no header of its own, a text/plain body): no preflight, so the
    // browser sends it, cookie and all, and only then checks the answer's headers.
    await attempt("ask", "/api/generate", {method: "POST",
      body: JSON.stringify({model: "llama3", prompt: "hi", stream: false})}),
  ];
  out.textContent = lines.join("\\n");
  return lines;
})();
</script>"""


@pytest.mark.browser
def test_a_page_of_the_same_site_never_reads_the_admin_api_nor_asks_as_the_admin(
    origin_gateway: Gateway, pages: dict[str, str]
) -> None:
    _Pages.page = SAME_SITE_PAGE.replace("GATEWAY", origin_gateway.url).encode()
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        # The admin opens the dashboard once: the browser now holds the session cookie.
        page.goto(f"{origin_gateway.url}/?token={origin_gateway.admin_token}")
        assert any(c["name"] == SESSION_COOKIE for c in context.cookies())
        page.goto(pages["same-site"])
        outcome = page.evaluate("window.done")
        page.screenshot(path=ARTIFACTS / "origins-same-site.png")
        context.close()
    with origin_gateway.client() as admin:
        found = admin.get("/api/v1/admin/dashboard").json()  # this gateway's only ask

    # The admin API refuses it, and says so in the console; the ask goes through (the
    # browser then hides its answer: no credentials allowed), but as anyone's, not the admin's.
    assert outcome == ["stats: TypeError: Failed to fetch", "ask: TypeError: Failed to fetch"]
    assert any("origin-not-allowed:the-admin-API-needs-it-in--admin-origins" in m for m in console)
    assert any("Access-Control-Allow-Credentials" in m for m in console), console
    assert [record["key_label"] for record in found] == [None]
