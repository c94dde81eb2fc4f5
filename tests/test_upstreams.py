"""Several upstreams end to end: the gateway under uvicorn in front of three Ollama stand-ins
and an OpenAI-compatible one, each a process of its own."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import Gateway, free_port, start_gateway
from tests.helpers import (
    ask,
    assert_error,
    calls_with,
    data,
    read_events,
    read_until,
    unique,
    wait_record,
)
from tests.ollama_standin import StandIn, start_standin
from tests.openai_standin import OpenAIStandIn, start_openai_standin
from tests.sse import SSEParser
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.server

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"


def eventually(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


def upstreams(gateway: Gateway) -> dict[str, dict[str, Any]]:
    health = httpx.get(gateway.url + "/health", timeout=10).json()
    return {u["name"]: u for u in health["upstreams"]}


def gateway_for(tmp_path: Path, *specs: str, extra: tuple[str, ...] = ()) -> Gateway:
    flags = [arg for spec in specs for arg in ("--upstream", spec)]
    return start_gateway(tmp_path / "data", *flags, "--keepalive", "0.2", *extra)


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[StandIn, StandIn, StandIn]]:
    """Three Ollama stand-ins with models on some and not others; fresh ones per test, since
    what is loaded on each is part of what the tests look at."""
    a = start_standin(models=["llama3", "qwen"])
    b = start_standin(models=["llama3", "mistral"])
    c = start_standin(models=["phi3"])
    try:
        yield a, b, c
    finally:
        for server in (a, b, c):
            server.stop()


@pytest.fixture
def llama() -> Iterator[OpenAIStandIn]:
    with start_openai_standin(port=free_port(), models=["smollm2"], api_key="sk-llama-9f3e") as s:
        yield s


def test_models_are_the_union_and_each_call_is_recorded_where_it_went(
    three: tuple[StandIn, StandIn, StandIn], llama: OpenAIStandIn, tmp_path: Path
) -> None:
    a, b, c = three
    specs = (
        f"a={a.url}",
        f"b={b.url}",
        f"c={c.url}",
        f"llama={llama.url}/v1,kind=openai,key_env=LLAMA_KEY",
    )
    flags = [arg for spec in specs for arg in ("--upstream", spec)]
    project = unique("union")
    env = {"LLAMA_KEY": "sk-llama-9f3e"}
    with (
        start_gateway(tmp_path / "data", *flags, env=env) as gateway,
        gateway.client() as client,
    ):
        models = client.get("/api/v1/ai/models").json()
        for model in ("qwen", "mistral", "phi3", "smollm2"):
            response = client.post(SYNC, json=ask(model, "hi [[tokens=2]]", project=project))
            assert response.status_code == 200, response.text
        found = client.get("/api/v1/admin/dashboard", params={"project": project}).json()
        health = client.get("/health").text
        logs = gateway.logs()

    assert models == [
        "llama3:latest",
        "qwen:latest",
        "mistral:latest",
        "phi3:latest",
        "smollm2",
    ]
    where = {r["model_name"]: (r["upstream"], r["attempts"]) for r in found}
    assert where == {
        "qwen": ("a", 1),
        "mistral": ("b", 1),
        "phi3": ("c", 1),
        "smollm2": ("llama", 1),
    }
    (asked,) = [c for c in llama.calls() if c["path"] == "/v1/chat/completions"]
    llama_record = next(r for r in found if r["model_name"] == "smollm2")
    assert llama_record["output_tokens"] == 2  # what the server's usage said
    # The upstream's own key went to it, and nowhere else.
    assert asked["authorization"] == "Bearer sk-llama-9f3e"
    stored = "".join(p.read_text(errors="replace") for p in gateway.data.rglob("*") if p.is_file())
    for text in (health, logs, stored):
        assert "sk-llama-9f3e" not in text


def test_calls_go_where_the_model_is_loaded(
    three: tuple[StandIn, StandIn, StandIn], tmp_path: Path
) -> None:
    a, b, _ = three
    # Ollama loads a model when asked with no messages; b has llama3 in memory now.
    httpx.post(b.url + "/api/chat", json={"model": "llama3", "messages": []}, timeout=5)
    project = unique("loaded")
    with (
        gateway_for(tmp_path, f"a={a.url}", f"b={b.url}") as gateway,
        gateway.client() as client,
    ):
        assert upstreams(gateway)["b"]["loaded"] == ["llama3:latest"]
        for _ in range(3):
            client.post(SYNC, json=ask(content="hi [[tokens=1]]", project=project))
        found = client.get("/api/v1/admin/dashboard", params={"project": project}).json()

    assert [r["upstream"] for r in found] == ["b", "b", "b"]
    assert [c for c in a.calls() if c["messages"]] == []


def test_then_calls_go_to_the_least_busy(
    three: tuple[StandIn, StandIn, StandIn], tmp_path: Path
) -> None:
    a, _, _ = three
    project = unique("busy")
    with start_standin(models=["llama3"], delay=0.3) as slow:
        # llama3 loaded on both: the next rule decides, how busy each is.
        for server in (slow, a):
            httpx.post(server.url + "/api/chat", json={"model": "llama3", "messages": []})
        with (
            gateway_for(tmp_path, f"slow={slow.url}", f"a={a.url}") as gateway,
            gateway.client() as client,
        ):
            body = ask(content="long [[tokens=8]]", project=project)
            with client.stream("POST", STREAM, json=body) as held:
                reading = read_until(held, "token")  # on slow, first of equals, for 2.4 s
                quick = [
                    client.post(
                        SYNC, json=ask(content="[[tokens=1]] [[delay=0.01]]", project=project)
                    )
                    for _ in range(3)
                ]
                del reading

            def all_four() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = client.get(
                    "/api/v1/admin/dashboard", params={"project": project}
                ).json()
                return found

            # The held stream's record lands when the gateway sees its client go.
            eventually(lambda: len(all_four()) == 4)
            found = all_four()

    assert [r.status_code for r in quick] == [200] * 3
    by_upstream = sorted((r["upstream"], r["streamed"]) for r in found)
    assert by_upstream == [("a", False), ("a", False), ("a", False), ("slow", True)]


def test_a_busy_upstreams_cap_makes_calls_wait_in_the_gateway_not_fail(
    three: tuple[StandIn, StandIn, StandIn], tmp_path: Path
) -> None:
    a, _, _ = three
    project = unique("cap")
    with (
        gateway_for(tmp_path, f"a={a.url},cap=1") as gateway,
        gateway.client() as client,
        ThreadPoolExecutor(1) as pool,
    ):
        body = ask(content="hold [[tokens=3]] [[stall=1]]", project=project)
        with client.stream("POST", STREAM, json=body) as held:
            reading = read_until(held, "token")  # kept: dropping it would hang up
            second = pool.submit(
                client.post, SYNC, json=ask(content="next [[tokens=2]]", project=project)
            )
            eventually(lambda: upstreams(gateway)["a"]["waiting"] == 1)
            assert upstreams(gateway)["a"]["in_flight"] == 1
            assert not second.done()
            del reading
        # The held stream's client hung up: its slot goes to the waiting call.
        answer = second.result(timeout=15)

    assert answer.status_code == 200, answer.text
    assert answer.text == "w0 w1 "
    first, then = [c for c in a.calls() if c["messages"]]
    # The gateway gives the slot on as soon as it has closed the first call's connection; the
    # stand-in notes that call's end when its handler sees the close, which can come a moment
    # after the next call arrived (the fair queue hands a freed slot over at once).
    assert then["started"] >= first["ended"] - 0.5


def test_failover_before_the_first_byte_and_never_after(
    three: tuple[StandIn, StandIn, StandIn], tmp_path: Path
) -> None:
    a, b, c = three
    before, after = unique("before"), unique("after")
    with (
        gateway_for(tmp_path, f"a={a.url}", f"b={b.url}", f"c={c.url}") as gateway,
        gateway.client() as client,
    ):
        # Ollama's error as the stream's very first line: nothing reached the client yet.
        failed = client.post(SYNC, json=ask(content="[[error_after=0]]", project=before))
        with client.stream(
            "POST", STREAM, json=ask(content="[[error_after=2]]", project=after)
        ) as r:
            events, _ = read_events(r)
        first, second = wait_record(client, before), wait_record(client, after)

    tried = {name: s.calls() for name, s in (("a", a), ("b", b), ("c", c))}
    # Tried on a, then once on b (c has no llama3): never a third time, never twice on one.
    assert_error(failed, 502, "upstream_error")
    assert (first["upstream"], first["attempts"], first["status"]) == ("b", 2, "error")
    assert [len(calls_with(calls, "error_after=0")) for calls in tried.values()] == [1, 1, 0]
    # Two tokens reached the client: the failure after them is final, where it happened.
    # (A `loading` event comes first if the upstream chosen had not loaded llama3 by its
    # last health check: which one that is depends on the checks' timing.)
    kinds = [e.event for e in events if e.event != "loading"]
    assert kinds == ["start", "token", "token", "error"]
    assert (second["attempts"], second["status"], second["output"]) == (1, "error", "w0 w1 ")
    assert len(calls_with(tried[second["upstream"]], "error_after=2")) == 1
    assert sum(len(calls_with(calls, "error_after=2")) for calls in tried.values()) == 1


def test_a_killed_upstream_fails_its_streams_loses_new_calls_then_comes_back(
    three: tuple[StandIn, StandIn, StandIn], tmp_path: Path
) -> None:
    a, b, _ = three
    port = int(a.url.rsplit(":", 1)[1])
    streaming, after, back = unique("inflight"), unique("after"), unique("back")
    with (
        gateway_for(
            tmp_path, f"a={a.url}", f"b={b.url}", extra=("--health-interval", "0.3")
        ) as gateway,
        gateway.client() as client,
        ThreadPoolExecutor(3) as pool,
    ):
        # Both have llama3; the first call makes it loaded on a, so the rest follow it there.
        client.post(SYNC, json=ask(content="warm [[tokens=1]]"))
        started = threading.Barrier(4)

        def stream() -> list[str]:
            body = ask(content="long [[tokens=2000]] [[delay=0.02]]", project=streaming)
            with client.stream("POST", STREAM, json=body) as response:
                parser, names = SSEParser(), []
                for text in response.iter_text():
                    for event in parser.feed(text):
                        names.append(event.event)
                        if event.event == "token" and names.count("token") == 3:
                            started.wait(10)
                return names

        streams = [pool.submit(stream) for _ in range(3)]
        started.wait(10)
        a.process.kill()
        a.process.wait()
        ended = [s.result(timeout=20) for s in streams]
        # The broken streams set off a check, which cannot connect: a leaves the routing.
        eventually(lambda: upstreams(gateway)["a"]["circuit"] == "open")
        down = upstreams(gateway)["a"]
        new = client.post(SYNC, json=ask(content="hi [[tokens=2]]", project=after))

        a2 = start_standin(models=["llama3", "qwen"], port=port)
        try:
            eventually(lambda: upstreams(gateway)["a"]["status"] == "up")
            # qwen is only on a: a is in the routing again.
            again = client.post(SYNC, json=ask("qwen", "hi [[tokens=1]]", project=back))
            in_flight = client.get("/api/v1/admin/dashboard", params={"project": streaming})
            records = in_flight.json()
            moved = wait_record(client, after)
            returned = wait_record(client, back)
        finally:
            a2.stop()

    for names in ended:
        assert (names[0], names[-1]) == ("start", "error"), names
        assert "done" not in names
    assert [(r["status"], r["upstream"]) for r in records] == [("error", "a")] * 3
    assert new.status_code == 200
    assert (moved["upstream"], moved["attempts"]) == ("b", 1)
    assert (down["status"], down["circuit"]) == ("down", "open")
    assert again.status_code == 200
    assert returned["upstream"] == "a"


def test_no_field_or_header_makes_the_gateway_call_an_address_it_was_not_given(
    three: tuple[StandIn, StandIn, StandIn], tmp_path: Path
) -> None:
    a, _, _ = three
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(16)
    canary.settimeout(0.5)
    where = f"127.0.0.1:{canary.getsockname()[1]}"
    with (
        gateway_for(tmp_path, f"a={a.url}") as gateway,
        gateway.client() as client,
    ):
        tries = [
            client.post(SYNC, json=ask(f"{where}/llama3")),
            client.post(SYNC, json=ask(f"http://{where}/x")),
            client.post(SYNC, json=ask("llama3", options={"host": f"http://{where}"})),
            client.post(
                SYNC,
                json=ask("llama3"),
                headers={"X-Forwarded-Host": where, "X-Upstream": f"http://{where}"},
            ),
            client.get("/api/v1/ai/models", params={"upstream": f"http://{where}"}),
        ]
    with pytest.raises(TimeoutError):
        canary.accept()
    canary.close()

    assert [t.status_code for t in tries] == [422, 422, 200, 200, 200]


@pytest.mark.browser
def test_the_dashboard_shows_each_upstream(
    three: tuple[StandIn, StandIn, StandIn], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from tests.browser import ARTIFACTS, chromium

    a, b, _ = three
    with (
        gateway_for(tmp_path, f"gpu1={a.url},cap=4", f"gpu2={b.url},weight=2") as gateway,
        gateway.client() as client,
        chromium() as browser,
    ):
        client.post(SYNC, json=ask("qwen", "hi [[tokens=1]]"))
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(f"{gateway.url}/?token={gateway.admin_token}")
        rows = page.locator("#upstreams tbody tr[data-name]")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("gpu1")
        expect(rows.nth(0)).to_contain_text("0 / 4")
        expect(rows.nth(0).locator(".loaded")).to_have_text("qwen:latest")
        expect(rows.nth(1)).to_contain_text("mistral:latest")
        expect(rows.nth(1).locator(".state")).to_have_text("up")
        page.locator("#upstreams").screenshot(path=ARTIFACTS / "upstreams.png")
        page.screenshot(path=ARTIFACTS / "dashboard-upstreams.png", full_page=True)


def test_an_sse_error_event_is_the_one_error_shape(
    three: tuple[StandIn, StandIn, StandIn], tmp_path: Path
) -> None:
    a, _, _ = three
    with (
        gateway_for(tmp_path, f"a={a.url}") as gateway,
        gateway.client() as client,
        client.stream("POST", STREAM, json=ask(content="[[error_after=1]]")) as response,
    ):
        events, _ = read_events(response)

    error = data(events[-1])["error"]
    assert (error["code"], error["status"]) == ("upstream_error", 502)


@pytest.mark.faults
def test_a_hung_upstream_loses_its_calls_to_another_and_leaves_the_routing(
    tmp_path: Path,
) -> None:
    """An upstream that takes connections and answers nothing (a TCP proxy
    that stops relaying). A call waiting on it for a first byte is tried on the other
    upstream once the first-byte bound passes, nothing having reached its client; its
    health check times out, which takes it out of the routing at once; when it answers
    again, it is back. Before: each call waited the whole --timeout there, the circuit
    stayed closed while /health said down, and routing kept preferring it."""
    a, b = start_standin(models=["llama3"]), start_standin(models=["llama3"])
    proxy = TcpProxy("127.0.0.1", int(a.url.rsplit(":", 1)[1]))
    project = unique("hung")
    try:
        with (
            gateway_for(
                tmp_path,
                f"hung=http://127.0.0.1:{proxy.port},first_byte=1",
                f"good={b.url}",
                extra=("--health-interval", "1", "--timeout", "120"),
            ) as gateway,
            gateway.client(timeout=60) as client,
        ):
            # The first call goes to `hung` (first among equals), and makes its model
            # loaded there: the rest would follow it.
            warm = client.post(SYNC, json=ask(content="[[tokens=1]]"))
            proxy.freeze()
            asked = client.post(SYNC, json=ask(content="[[tokens=2]]", project=project))
            record = wait_record(client, project)
            eventually(lambda: upstreams(gateway)["hung"]["circuit"] == "open")
            health = upstreams(gateway)["hung"]
            later = [unique("later") for _ in range(3)]
            after = [client.post(SYNC, json=ask(content="[[tokens=1]]", project=p)) for p in later]
            after_records = [wait_record(client, p) for p in later]
            proxy.thaw()
            eventually(lambda: upstreams(gateway)["hung"]["circuit"] == "closed")
    finally:
        proxy.close()
        a.stop()
        b.stop()

    assert (warm.status_code, asked.status_code) == (200, 200), asked.text
    assert asked.text == "w0 w1 "
    assert (record["upstream"], record["attempts"], record["status"]) == ("good", 2, "ok")
    assert health["status"] == "down"
    # Its check, bounded by its first_byte too, timed out.
    assert "sent no first byte within 1 s" in health["error"]
    assert [r.status_code for r in after] == [200, 200, 200]
    # Out of the routing: straight to `good`, none waiting on `hung` first.
    assert {(r["upstream"], r["attempts"]) for r in after_records} == {("good", 1)}
