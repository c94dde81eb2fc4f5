"""A client that hangs up while its call waits in the fair queue: the call leaves the queue at
once, is recorded `cancelled`, and nothing was sent upstream for it (a real gateway process,
cap=1 on the Ollama stand-in)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import ask, calls_with, records, unique
from tests.ollama_standin import StandIn

from .test_hangups import eventually_cancelled, post_and_leave

pytestmark = pytest.mark.server


@pytest.fixture
def capped(standin: StandIn, tmp_path: Path) -> Iterator[Gateway]:
    with start_gateway(tmp_path / "data", "--upstream", f"box={standin.url},cap=1") as server:
        yield server
    assert "Traceback" not in server.logs(), server.logs()


def waiting(client: httpx.Client) -> int:
    view = client.get("/api/v1/admin/queue").json()
    return sum(len(line["waiting"]) for line in view["queues"])


@pytest.mark.parametrize(
    ("path", "until"),
    [("/api/v1/ai/ask_sync", b""), ("/api/v1/ai/ask_async", b"event: queued")],
)
def test_a_call_left_while_queued_leaves_at_once_and_never_reaches_the_upstream(
    capped: Gateway, standin: StandIn, path: str, until: bytes
) -> None:
    holder, leaver = unique("holder"), unique("leaver")
    with capped.client() as client, ThreadPoolExecutor(1) as pool:
        long = ask(content=f"{holder} [[tokens=20]] [[delay=0.1]]", project=holder)
        held = pool.submit(client.post, "/api/v1/ai/ask_sync", json=long)
        standin.wait_for(lambda calls: bool(calls_with(calls, holder)))

        post_and_leave(capped, path, ask(content=leaver, project=leaver), until, project=leaver)

        found = eventually_cancelled(client, leaver)
        deadline = time.monotonic() + 5
        while waiting(client):
            assert time.monotonic() < deadline, "the call that left still waits"
            time.sleep(0.02)
        assert held.result().status_code == 200
        assert [r["status"] for r in found] == ["cancelled"]
        assert found[0].get("queue_seconds") is None  # it never got a slot
        assert calls_with(standin.calls(), leaver) == []
        assert [r["status"] for r in records(client, project=holder)] == ["ok"]
