"""A real model end to end: two llama.cpp `llama-server` processes with SmolLM2-135M on
loopback, as two upstreams of kind openai behind one gateway.

What each server did is read from the server itself (/metrics, /slots), never only from the
gateway or the socket. These run in CI (marked `model`); scripts/llama-server builds the
server once per machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import httpx
import pytest

from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import ask, data, read_events, unique, wait_record
from tests.llama import MODEL, LlamaServer, binaries
from tests.sse import SSEParser

pytestmark = [pytest.mark.model, pytest.mark.timeout(2400)]

STREAM = "/api/v1/ai/ask_async"
SYNC = "/api/v1/ai/ask_sync"
# Greedy, so that the same question gets the same answer, directly or through the gateway.
GREEDY = {"temperature": 0}
# Long on purpose: SmolLM2 counts on until the context or num_predict ends it (20 s or more).
LONG = "Count from 1 to 300, separated by commas."


def eventually(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def llamas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    server, model = binaries()
    folder = tmp_path_factory.mktemp("llama")
    servers = [LlamaServer(server, model, folder / f"l{n}.log").start() for n in (1, 2)]
    try:
        for one in servers:
            one.wait_ready()
        yield servers
    finally:
        for one in servers:
            one.stop()


@pytest.fixture(scope="module")
def site(llamas: list[LlamaServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("real") / "data"
    flags = [f"l{n}={one.url},kind=openai" for n, one in enumerate(llamas, 1)]
    with start_gateway(
        data_dir,
        "--upstream",
        flags[0],
        "--upstream",
        flags[1],
        "--health-interval",
        "0.5",
        "--keepalive",
        "0.5",
    ) as gateway:
        yield gateway
    assert "Traceback" not in gateway.logs(), gateway.logs()


def predicted(llamas: list[LlamaServer]) -> float:
    """Tokens the servers have generated so far, by their own count."""
    return sum(one.metrics()["tokens_predicted_total"] for one in llamas)


def upstreams(gateway: Gateway) -> dict[str, dict[str, Any]]:
    health = httpx.get(gateway.url + "/health", timeout=10).json()
    return {u["name"]: u for u in health["upstreams"]}


def test_a_seed_stream_of_real_tokens_is_counted_as_the_server_counted(
    llamas: list[LlamaServer], site: Gateway
) -> None:
    question = "Name three colours."
    direct = httpx.post(
        llamas[0].url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": question}], **GREEDY}
        | {"max_tokens": 24},
        timeout=60,
    ).json()
    project = unique("real")
    before = predicted(llamas)
    body = ask(MODEL, question, project=project, options={**GREEDY, "num_predict": 24})
    with site.client(timeout=60) as client, client.stream("POST", STREAM, json=body) as response:
        events, _ = read_events(response)
        record = wait_record(client, project)

    tokens = [data(e)["content"] for e in events if e.event == "token"]
    assert [e.event for e in events][-1] == "done"
    assert len(tokens) > 1  # streamed as it came, not whole
    assert "".join(tokens) == direct["choices"][0]["message"]["content"]
    usage = direct["usage"]
    assert (record["input_tokens"], record["output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert record["tokens_estimated"] is False
    assert record["eval_seconds"] > 0  # llama-server's own timings
    assert record["upstream"] in ("l1", "l2")
    # And the servers' own counter moved by exactly that much.
    eventually(lambda: predicted(llamas) - before == record["output_tokens"])


def test_a_client_that_hangs_up_stops_the_generation(
    llamas: list[LlamaServer], site: Gateway
) -> None:
    project = unique("hangup")
    generating = 0
    before = predicted(llamas)
    body = ask(MODEL, LONG, project=project, options={**GREEDY, "num_predict": 900})
    with site.client(timeout=60) as client:
        with client.stream("POST", STREAM, json=body) as response:
            parser, tokens = SSEParser(), 0
            for text in response.iter_text():
                tokens += sum(e.event == "token" for e in parser.feed(text))
                if tokens >= 5:
                    # Generating: a full answer would keep a slot busy for 20 s or more.
                    generating = sum(one.busy_slots() for one in llamas)
                    break  # and drop the reader: the client hangs up
        assert generating == 1
        # Hung up: the server itself stops, long before its 900 tokens.
        eventually(lambda: sum(one.busy_slots() for one in llamas) == 0, seconds=10)
        record = wait_record(client, project)

    assert record["status"] == "cancelled"
    assert predicted(llamas) - before < 300


def test_a_killed_server_fails_its_streams_loses_new_calls_and_comes_back(
    llamas: list[LlamaServer], site: Gateway
) -> None:
    project, after, back = unique("kill"), unique("after"), unique("back")
    three_tokens = threading.Barrier(3)
    stop = threading.Event()

    def stream(client: httpx.Client) -> list[str]:
        body = ask(MODEL, LONG, project=project, options={**GREEDY, "num_predict": 900})
        names: list[str] = []
        with client.stream("POST", STREAM, json=body) as response:
            parser = SSEParser()
            for text in response.iter_text():
                for event in parser.feed(text):
                    names.append(event.event)
                    if event.event == "token" and names.count("token") == 3:
                        three_tokens.wait(60)
                if stop.is_set() or names[-1] in ("done", "error"):
                    break
        return names

    with site.client(timeout=60) as client, ThreadPoolExecutor(2) as pool:
        # Two streams at once: the least busy goes first, so one lands on each server.
        streams = [pool.submit(stream, client) for _ in range(2)]
        three_tokens.wait(60)
        on = {name: u["in_flight"] for name, u in upstreams(site).items()}
        llamas[0].kill()
        # The stream on l1 ends with an error event; the other goes on until hung up.
        done, running = wait(streams, timeout=30, return_when=FIRST_COMPLETED)
        stop.set()
        (killed,) = done
        survivor = running.pop().result(timeout=60)
        # The broken stream set off a check, which cannot connect: l1 leaves the routing.
        eventually(lambda: upstreams(site)["l1"]["circuit"] == "open")
        down = upstreams(site)["l1"]
        new = client.post(
            SYNC, json=ask(MODEL, "Say hi.", project=after, options={"num_predict": 8})
        )

        llamas[0].start().wait_ready()
        eventually(lambda: upstreams(site)["l1"]["circuit"] == "closed")
        # Back in routing: of two calls at once, one goes to each.
        both = [
            pool.submit(
                client.post,
                SYNC,
                json=ask(MODEL, LONG, project=back, options={**GREEDY, "num_predict": 40}),
            )
            for _ in range(2)
        ]
        assert [b.result(timeout=120).status_code for b in both] == [200, 200]
        records = client.get("/api/v1/admin/dashboard", params={"project": project}).json()
        moved = wait_record(client, after)
        returned = client.get("/api/v1/admin/dashboard", params={"project": back}).json()

    assert on == {"l1": 1, "l2": 1}
    names = killed.result()
    assert (names[0], names[-1]) == ("start", "error")
    assert "done" not in names
    assert "error" not in survivor
    by_upstream = {r["upstream"]: r["status"] for r in records}
    assert by_upstream == {"l1": "error", "l2": "cancelled"}
    assert new.status_code == 200, new.text
    assert (moved["upstream"], moved["attempts"]) == ("l2", 1)
    assert (down["status"], down["circuit"]) == ("down", "open")
    assert sorted(r["upstream"] for r in returned) == ["l1", "l2"]


@pytest.mark.browser
def test_the_dashboard_shows_both_servers(llamas: list[LlamaServer], site: Gateway) -> None:
    from playwright.sync_api import expect

    from tests.browser import ARTIFACTS, chromium

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(f"{site.url}/?token={site.admin_token}")
        rows = page.locator("#upstreams tbody tr[data-name]")
        expect(rows).to_have_count(2)
        for n in (0, 1):
            expect(rows.nth(n)).to_contain_text("openai")
            expect(rows.nth(n)).to_contain_text(MODEL)
            expect(rows.nth(n).locator(".state")).to_have_text("up")
        page.locator("#upstreams").screenshot(path=ARTIFACTS / "upstreams-llama-server.png")
