"""The fair queue against first-in-first-out, in one run: the same gateway code, with
`--queue-order fair` and with `--queue-order fifo`.

1. A batch key submits 200 asks at once to an upstream with cap=2; then an interactive key
   asks one. How long does the interactive ask wait for its slot?
2. Four keys with 1, 2, 4 and 8 concurrent callers each, asking as fast as they are answered,
   for a while: Jain's fairness index of the upstream slot-seconds (GPU time) each key got.
   1.0 is an even share; 0.25 is one key taking everything.

The gateway runs in this process (tests/asgi.py: the real app, keys, pipeline and router)
in front of a simulated model server that answers every call in `--service` seconds of
real time, so the numbers measure the queue, not a model.

python bench/fairness.py [--service 0.02] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calls.types import (
    Answer,
    CallRequest,
    Embeddings,
    EmbedRequest,
    GpuUse,
    LoadedModel,
    Metrics,
    ModelInfo,
    Piece,
)
from calls.upstream import UpstreamHealth
from queueing.line import Order
from tests.asgi import in_process
from upstreams.config import UpstreamSpec
from upstreams.router import Member, Router

MODEL = "llama3"


class SimStream:
    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.upstream: str | None = server.name
        self.attempts = 1
        self.metrics: Metrics | None = None
        self.gpu: GpuUse | None = None

    async def batches(self) -> AsyncIterator[list[Piece]]:
        await asyncio.sleep(self.server.service)
        yield [Piece("ok")]
        self.metrics = Metrics(output_tokens=1, upstream_seconds=self.server.service)

    async def aclose(self) -> None:
        pass


class SimServer:
    """A model server that answers each call after `service` seconds, with its model loaded,
    and counts the most calls it ran at once."""

    kind = "sim"
    exact_model_names = False

    def __init__(self, service: float) -> None:
        self.name = "gpu"
        self.address = "http://sim.invalid"
        self.service = service
        self.running = 0
        self.peak = 0

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo(name=MODEL)]

    async def loaded(self) -> list[LoadedModel]:
        return [LoadedModel(name=MODEL)]

    async def show(self, model: str) -> ModelInfo:
        return ModelInfo(name=model)

    async def version(self) -> str:
        return "sim"

    async def health(self) -> list[UpstreamHealth]:
        return []

    async def capacity(self) -> int | None:
        return None

    async def answer(self, request: CallRequest) -> Answer:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.service)
        finally:
            self.running -= 1
        return Answer(content="ok", metrics=Metrics(output_tokens=1, upstream_seconds=self.service))

    async def open_stream(self, request: CallRequest) -> SimStream:
        return SimStream(self)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def queue_seconds(timing: str) -> float:
    """The queue's part of a Server-Timing header (`gateway;dur=0.4, queue;dur=15.9, ...`,
    in milliseconds), in seconds; 0 if it names none."""
    found = re.search(r"\bqueue;dur=([0-9.]+)", timing)
    return float(found[1]) / 1000 if found else 0.0


def jain(values: list[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2)."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 0.0


async def run(order: Order, service: float, seconds: float, folder: Path) -> dict[str, float]:
    sim = SimServer(service)
    spec = UpstreamSpec(name="gpu", url=sim.address, cap=2)
    routed = Router([Member(spec, sim, 5.0)], order=order, max_waiting=4096, per_key=4096)
    async with in_process(folder / order, "--max-streams", "0", upstream=routed) as local:
        async with local.client() as admin:
            keys = {}
            for label, priority in [("batch", "batch"), ("chat", "interactive")] + [
                (f"k{n}", "interactive") for n in (1, 2, 4, 8)
            ]:
                made = await admin.post(
                    "/api/v1/admin/keys", json={"label": label, "priority": priority}
                )
                made.raise_for_status()
                keys[label] = made.json()["key"]

        def client(label: str) -> httpx.AsyncClient:
            return local.client(admin=False, Authorization=f"Bearer {keys[label]}")

        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        result: dict[str, float] = {}

        # 1. 200 batch asks at once, then one interactive ask.
        async with client("batch") as batch, client("chat") as chat:
            flood = [asyncio.ensure_future(batch.post("/api/chat", json=body)) for _ in range(200)]
            while len(routed.line.waiting) < 198:  # noqa: ASYNC110 (the router's own line)
                await asyncio.sleep(0.005)
            started = time.perf_counter()
            answer = await chat.post("/api/chat", json=body)
            result["interactive_total_s"] = time.perf_counter() - started
            result["interactive_wait_s"] = queue_seconds(answer.headers.get("server-timing", ""))
            await asyncio.gather(*flood)
            result["peak_running_1"] = sim.peak

        # 2. 4 keys with 1, 2, 4, 8 callers for `seconds`.
        served: dict[str, float] = defaultdict(float)
        stop = time.perf_counter() + seconds

        async def caller(label: str, http: httpx.AsyncClient) -> None:
            while time.perf_counter() < stop:
                response = await http.post("/api/chat", json=body)
                response.raise_for_status()
                served[label] += service  # each call held the slot for its service time

        clients = {f"k{n}": client(f"k{n}") for n in (1, 2, 4, 8)}
        try:
            await asyncio.gather(
                *(caller(f"k{n}", clients[f"k{n}"]) for n in (1, 2, 4, 8) for _ in range(n))
            )
        finally:
            for http in clients.values():
                await http.aclose()
        shares = [served[f"k{n}"] for n in (1, 2, 4, 8)]
        result["jain"] = jain(shares)
        for n, share in zip((1, 2, 4, 8), shares, strict=True):
            result[f"share_k{n}"] = share / sum(shares)
        result["peak_running"] = sim.peak
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", type=float, default=0.02, help="seconds a call takes")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the Jain run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        orders: tuple[Order, ...] = ("fair", "fifo")
        results = {
            order: await run(order, args.service, args.seconds, Path(tmp)) for order in orders
        }
    print(f"cap=2, service {args.service * 1000:g} ms a call, {args.seconds:g} s of contention")
    print()
    print("| | fair | fifo |")
    print("| --- | --- | --- |")
    rows = [
        ("interactive ask's wait for a slot (s), behind 200 batch asks", "interactive_wait_s"),
        ("interactive ask, whole (s)", "interactive_total_s"),
        ("Jain's index, keys with 1/2/4/8 callers", "jain"),
        ("share of key with 1 caller", "share_k1"),
        ("share of key with 2 callers", "share_k2"),
        ("share of key with 4 callers", "share_k4"),
        ("share of key with 8 callers", "share_k8"),
        ("most calls the upstream ran at once", "peak_running"),
    ]
    for name, field in rows:
        fair, fifo = results["fair"][field], results["fifo"][field]
        print(f"| {name} | {fair:.3f} | {fifo:.3f} |")


if __name__ == "__main__":
    asyncio.run(main())
