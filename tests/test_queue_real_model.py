"""The fair queue in front of a real model: one llama-server with 2 slots (SmolLM2-135M), whose
cap the gateway reads from its /props; a batch key sends 40 calls at once, and an interactive
key's calls, sent meanwhile, get their first token within one call's service time, not after
the batch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.gateway_proc import ADMIN_TOKEN, Gateway, start_gateway
from tests.helpers import ask, unique
from tests.llama import MODEL, LlamaServer

pytestmark = pytest.mark.model

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OPTIONS = {"temperature": 0, "num_predict": 48}


@pytest.fixture(scope="module")
def site(llama: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("queue-real") / "data"
    with start_gateway(data, "--upstream", f"llama={llama.url},kind=openai") as gateway:
        yield gateway
    assert "Traceback" not in gateway.logs(), gateway.logs()


def key(site: Gateway, label: str, priority: str) -> dict[str, str]:
    made = httpx.post(
        f"{site.url}/api/v1/admin/keys", json={"label": label, "priority": priority}, headers=ADMIN
    )
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['key']}", "Accept": "application/json"}


def whole(site: Gateway, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{site.url}/api/v1/ai/ask_sync", json=body, headers=headers, timeout=600)


def ttft(site: Gateway, headers: dict[str, str], project: str) -> float:
    """Seconds from sending a seed stream to its first token, as the client sees it."""
    body = ask(MODEL, "Say hello.", project=project, options=OPTIONS)
    began = time.monotonic()
    with httpx.stream(
        "POST", f"{site.url}/api/v1/ai/ask_async", json=body, headers=headers, timeout=600
    ) as response:
        first: float | None = None
        kinds = []
        for line in response.iter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
                if kinds[-1] == "token" and first is None:
                    first = time.monotonic() - began
    assert first is not None, kinds
    assert kinds[-1] == "done", kinds
    return first


def records(site: Gateway, project: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(
        f"{site.url}/api/v1/admin/dashboard",
        params={"project": project, "limit": 100},
        headers=ADMIN,
    ).json()
    return found


def test_an_interactive_call_waits_for_one_call_not_for_the_batch(site: Gateway) -> None:
    health = httpx.get(f"{site.url}/health").json()["upstreams"][0]
    assert (health["capacity"], health["fairness"]) == (2, "on (server cap)")
    batch, chat = key(site, "batch", "batch"), key(site, "chat", "interactive")
    flood, asked = unique("batch"), unique("chat")
    body = ask(MODEL, "Write a long story about a lighthouse.", project=flood, options=OPTIONS)
    firsts: list[float] = []
    with ThreadPoolExecutor(40) as pool:
        calls = [pool.submit(whole, site, batch, body) for _ in range(40)]
        time.sleep(3)  # the 40 are in: 2 running, 38 waiting
        for _ in range(3):
            firsts.append(ttft(site, chat, asked))
        batch_left = sum(not c.done() for c in calls)
        answers = [c.result() for c in calls]
        failed = [(a.status_code, a.text[:300]) for a in answers if a.status_code != 200]
        assert failed == []

    done = records(site, flood)
    assert len(done) == 40
    # A call's service time: how long it held its slot (its time minus its wait).
    service = [r["total_seconds"] - r["queue_seconds"] for r in done]
    longest_wait = max(r["queue_seconds"] for r in done)
    mine = records(site, asked)
    print(
        f"\nservice time median {statistics.median(service):.2f} s, max {max(service):.2f} s; "
        f"batch's longest wait {longest_wait:.1f} s; interactive TTFT "
        f"{', '.join(f'{t:.2f}' for t in firsts)} s (queue "
        f"{', '.join(str(r['queue_seconds']) for r in mine)} s); batch calls left "
        f"after the interactive ones: {batch_left}"
    )
    assert batch_left > 10  # the interactive calls really went past a long batch
    assert max(firsts) <= max(service)
    assert all(r["priority"] == "interactive" for r in mine)
    assert all(r["priority"] == "batch" for r in done)
    assert longest_wait > 3 * max(firsts)
