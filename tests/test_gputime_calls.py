"""GPU time in the records: every call through the router is charged by the rule of
upstreams.gputime, and under load an upstream's calls never add up to more GPU-seconds than
the elapsed time times its GPUs, however much its server claims."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from access.identity import Credentials
from calls.pipeline import Ask
from calls.types import CallRequest, Message
from ollama_client import OllamaUpstream
from routes.request_id import new_id
from store import UsageQuery
from tests import ollama_standin
from tests.asgi import STANDIN_URL, Local, in_process
from tests.gateway_proc import start_gateway
from tests.helpers import arecords, ask, records, unique
from tests.ollama_standin import StandIn
from upstreams.config import UpstreamSpec
from upstreams.router import Member, Router

pytestmark = pytest.mark.anyio
SYNC = "/api/v1/ai/ask_sync"


def routed(gpus: int = 1, cost: float | None = None) -> Router:
    """A router over the in-process stand-in, as `--upstream gpu=...,gpus=N,cost=C` makes."""
    transport = httpx.ASGITransport(app=ollama_standin.create_app())
    spec = UpstreamSpec(name="gpu", url=STANDIN_URL, gpus=gpus, cost=cost)
    return Router([Member(spec, OllamaUpstream(transport, STANDIN_URL, name="gpu"), 5.0)])


@asynccontextmanager
async def gateway(folder: Path, router: Router, *flags: str) -> AsyncIterator[Local]:
    async with in_process(folder, *flags, upstream=router) as local:
        yield local


async def test_a_call_alone_is_charged_the_upstreams_own_time(tmp_path: Path) -> None:
    async with gateway(tmp_path / "data", routed(cost=3.6)) as local, local.client() as client:
        project = unique()
        response = await client.post(
            SYNC, json=ask(content="[[tokens=3]] [[load=0.05]]", project=project)
        )
        assert response.status_code == 200
        (record,) = await arecords(client, project=project)
        health = (await client.get("/health")).json()

    (upstream,) = health["upstreams"]
    assert (upstream["name"], upstream["gpus"], upstream["cost"]) == ("gpu", 1, 3.6)
    own = record["load_seconds"] + record["prompt_eval_seconds"] + record["eval_seconds"]
    assert record["load_seconds"] >= 0.05
    assert record["gpu_seconds"] == pytest.approx(own, rel=1e-3, abs=2e-6)
    assert record["cost"] == pytest.approx(record["gpu_seconds"] / 1000, abs=1e-9)


async def test_without_a_price_the_cost_is_unknown_not_zero(tmp_path: Path) -> None:
    async with gateway(tmp_path / "data", routed()) as local, local.client() as client:
        project = unique()
        await client.post(SYNC, json=ask(content="[[load=0.02]]", project=project))
        (record,) = await arecords(client, project=project)

    assert record["gpu_seconds"] >= 0.02
    assert record["cost"] is None


async def test_a_claim_beyond_the_call_counts_as_the_time_it_held_its_slot(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path / "data", routed()) as local, local.client() as client:
        project = unique()
        started = time.monotonic()
        await client.post(SYNC, json=ask(content="[[report=3600]] [[delay=0.01]]", project=project))
        elapsed = time.monotonic() - started
        (record,) = await arecords(client, project=project)

    assert record["eval_seconds"] == 3600.0  # as the server said it
    assert 0 < record["gpu_seconds"] <= elapsed


@pytest.mark.parametrize("gpus", [1, 2])
async def test_under_load_an_upstream_never_gives_more_than_its_gpus(
    tmp_path: Path, gpus: int
) -> None:
    """48 calls at once (whole answers and streams, some cut short), each claiming 100 s of
    generation: their GPU-seconds add up to at most the elapsed time times the GPUs."""
    async with gateway(tmp_path / "data", routed(gpus=gpus)) as local, local.client() as client:
        project = unique()
        body = "[[report=100]] [[delay=0.005]] [[tokens=6]]"

        async def one(i: int) -> None:
            if i % 3 == 0:
                url = "/api/v1/ai/ask_async"
                async with client.stream("POST", url, json=ask(content=body, project=project)):
                    pass  # gone before the answer: cancelled, charged its share
            else:
                await client.post(SYNC, json=ask(content=body, project=project))

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(48)))
        elapsed = time.monotonic() - started
        found = await arecords(client, project=project, limit=100)

    assert len(found) == 48
    charged = [r["gpu_seconds"] for r in found]
    assert all(seconds is not None and seconds >= 0 for seconds in charged)
    claimed = sum(r["eval_seconds"] or 0 for r in found)
    assert claimed >= 100 * 32  # what summing the server's figures would have said
    assert sum(charged) <= elapsed * gpus
    assert sum(charged) > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_whose_client_hangs_up_is_charged_what_it_used(
    tmp_path: Path, stream: bool
) -> None:
    """Hanging up before the answer is complete is no way around a budget: the GPU worked
    for the time the call held its slot, whole answer or stream."""
    router = routed()
    # --open-wait 0: a stream is handed back at once, not after a second's wait for the
    # upstream to accept, so that its client goes 0.2 s into the 1.5 s load.
    async with gateway(tmp_path / "data", router, "--open-wait", "0") as local:
        pipeline = local.gateway
        asked = Ask(
            # The in-process stand-in's answer arrives whole after its load: a stream is
            # still opening when its client goes.
            request=CallRequest(model="llama3", messages=[Message("user", "[[load=1.5]]")]),
            credentials=Credentials(),
            id=new_id(),
            front="test",
            endpoint="/test",
            stream=stream,
        )
        call = await pipeline.call(asked)

        async def read() -> None:
            if stream:
                async for _ in call.events():
                    pass
            else:
                await call.answer()

        reading = asyncio.ensure_future(read())
        (member,) = router.members
        for _ in range(2000):  # until its slot is taken and its GPU clock runs
            if member.in_flight:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await call.aclose()
        await pipeline.store.flush()
        found = [r for r in await pipeline.store.query(UsageQuery(limit=10)) if r.id == asked.id]

    (record,) = found
    assert record.status == "cancelled"
    assert record.gpu_seconds is not None
    assert record.gpu_seconds >= 0.2


def test_under_load_through_a_real_gateway_the_gpus_are_never_exceeded(
    standin: StandIn, tmp_path: Path
) -> None:
    """A gateway process over one server as two upstreams (gpus=1 and gpus=2): 64 calls at
    once, whole and streamed on two fronts, each claiming 100 s of generation. Per upstream,
    the calls' GPU-seconds add up to at most the elapsed time times its GPUs."""
    project = unique("load")
    with start_gateway(
        tmp_path / "data",
        "--upstream",
        f"one={standin.url},gpus=1,models=llama3",
        "--upstream",
        f"two={standin.url},gpus=2,models=qwen",
    ) as site:
        content = "[[report=100]] [[delay=0.01]] [[tokens=8]]"

        def one(i: int) -> int:
            model = ("llama3", "qwen")[i % 2]
            with httpx.Client(base_url=site.url, timeout=60) as client:
                if i % 4 < 2:
                    body = ask(model, content, project=project)
                    return client.post("/api/v1/ai/ask_sync", json=body).status_code
                chat = {
                    "model": model,
                    "messages": [{"role": "user", "content": content}],
                    "stream": True,
                }
                with client.stream(
                    "POST", "/api/chat", json=chat, headers={"X-Project": project}
                ) as response:
                    for _ in response.iter_lines():
                        pass
                    return response.status_code

        started = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(one, range(64)))
        elapsed = time.monotonic() - started
        with site.client() as client:
            found = records(client, project=project, limit=200)

    assert statuses == [200] * 64
    assert len(found) == 64
    for upstream, gpus in (("one", 1), ("two", 2)):
        mine = [r for r in found if r["upstream"] == upstream]
        assert len(mine) == 32
        assert sum(r["eval_seconds"] for r in mine) == pytest.approx(3200)  # as claimed
        charged = sum(r["gpu_seconds"] for r in mine)
        assert 0 < charged <= elapsed * gpus
