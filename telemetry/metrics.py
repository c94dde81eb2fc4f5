"""The Prometheus metrics: every call counted as it is recorded, every gauge sampled each second.

Names follow the OpenTelemetry GenAI semantic conventions as Prometheus spells them
(`gen_ai_client_token_usage`, `gen_ai_server_request_duration_seconds`, ...), so dashboards and
alerts written for them fit; the gateway's own carry the `ollama_host_` prefix. docs/monitoring.md
has the one table of them all.

No label takes free text: projects, process ids, key labels and users stay out. Models are the
one label a caller chooses, so they are bounded, and named as servers list them ("llama3"
and "llama3:latest" are one series): the first MAX_MODELS models that an upstream
answered get their own value, and any other model is counted as `other`.

With `--workers N` the numbers are the whole gateway's: the program sets
PROMETHEUS_MULTIPROC_DIR for its workers (telemetry/multiproc.py), prometheus_client keeps each
worker's values in files there, and /metrics adds them up (counters and histograms summed, the
gauges as each declares: `livesum` for what each worker holds, `max` for what they all see).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from calls.errors import UpstreamError
from calls.models import canonical
from store.base import StoreError
from store.records import UsageRecord

from . import multiproc

if TYPE_CHECKING:
    from calls.record import Account
    from calls.upstream import Upstream
    from store.base import UsageStore

log = logging.getLogger("ollama_host.metrics")

# Distinct model label values at most; the rest are `other`.
MAX_MODELS = 100
OTHER = "other"
# How often each worker samples its gauges (open upstream slots, queue, health, store).
SAMPLE_SECONDS = 1.0
CIRCUIT_STATES = ("closed", "open", "half-open")

# Buckets: the GenAI conventions' advice where they give one, else the gateway's own.
# Each *_BOUNDS is the same with +Inf last, as prometheus_client keeps them.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
GATEWAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   1.0)  # fmt: skip
QUEUE_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)

# No `_created` series beside each counter and histogram: they double the series for a
# timestamp Prometheus does not need (it sees resets by itself).
disable_created_metrics()  # type: ignore[no-untyped-call]

INF = float("inf")
TOKEN_BOUNDS = (*TOKEN_BUCKETS, INF)
DURATION_BOUNDS = (*DURATION_BUCKETS, INF)
TTFT_BOUNDS = (*TTFT_BUCKETS, INF)
TPOT_BOUNDS = (*TPOT_BUCKETS, INF)
GATEWAY_BOUNDS = (*GATEWAY_BUCKETS, INF)
QUEUE_BOUNDS = (*QUEUE_BUCKETS, INF)
LOAD_BOUNDS = (*LOAD_BUCKETS, INF)
# In _CallChildren.histograms' order: duration, gateway, tokens in, tokens out, ttft, tpot,
# queue, load.
ALL_BOUNDS = (
    DURATION_BOUNDS,
    GATEWAY_BOUNDS,
    TOKEN_BOUNDS,
    TOKEN_BOUNDS,
    TTFT_BOUNDS,
    TPOT_BOUNDS,
    QUEUE_BOUNDS,
    LOAD_BOUNDS,
)
# Where each histogram's buckets start in a tally's one list of counts.
OFFSETS = tuple(sum(len(b) for b in ALL_BOUNDS[:i]) for i in range(len(ALL_BOUNDS)))
BUCKETS = sum(len(b) for b in ALL_BOUNDS)
_, AT_GATEWAY, AT_INPUT, AT_OUTPUT, AT_TTFT, AT_TPOT, AT_QUEUE, AT_LOAD = OFFSETS

MODEL = "gen_ai_request_model"
OPERATION = "gen_ai_operation_name"


class Models:
    """The model label's values: bounded, whatever the callers send."""

    __slots__ = ("known", "limit")

    def __init__(self, limit: int = MAX_MODELS) -> None:
        self.known: set[str] = set()
        self.limit = limit

    def label(self, model: str, *, answered: bool) -> str:
        """`model`, if known or if an upstream answered for it and there is room; else other."""
        if model in self.known:
            return model
        if answered and len(self.known) < self.limit:
            self.known.add(model)
            return model
        return OTHER


class Metrics:
    """Every metric, in a registry of its own (so several apps in one process never clash)."""

    def __init__(self, *, max_models: int = MAX_MODELS) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.models = Models(max_models)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per call, by type (input, output): the _sum is the tokens in and out.",
            [OPERATION, MODEL, "gen_ai_token_type", "upstream"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Whole time of a call, from its request's first byte to its record.",
            [OPERATION, MODEL, "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first piece of a streamed answer.",
            [OPERATION, MODEL],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "The upstream's generation time per output token (eval time over output tokens).",
            [OPERATION, MODEL],
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.calls = Counter(
            "ollama_host_calls",
            "Calls recorded, by front, model, upstream and status (ok, error, cancelled).",
            ["front", MODEL, "upstream", "status"],
            registry=registry,
        )
        self.gpu_seconds = Counter(
            "ollama_host_gpu_seconds",
            "GPU-seconds spent on calls: the record's gpu_seconds when the gateway has it, "
            "else the upstream's own time for the call (Ollama's total_duration).",
            ["upstream", MODEL],
            registry=registry,
        )
        self.gateway = Histogram(
            "ollama_host_gateway_seconds",
            "The gateway's own time per call: everything but the queue and the upstream.",
            ["front"],
            buckets=GATEWAY_BUCKETS,
            registry=registry,
        )
        self.queue = Histogram(
            "ollama_host_queue_seconds",
            "Time a call waited for a free upstream slot (--upstream-queue).",
            ["upstream"],
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self.load = Histogram(
            "ollama_host_model_load_seconds",
            "The upstream's model-load time per call, as it reports it (load_duration).",
            ["upstream", MODEL],
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.cold_starts = Counter(
            "ollama_host_cold_starts",
            "Calls that made their upstream load the model.",
            ["upstream", MODEL],
            registry=registry,
        )
        self.evictions = Counter(
            "ollama_host_evictions",
            "Models an upstream unloaded to make room for a call's model (the unloaded one).",
            ["upstream", MODEL],
            registry=registry,
        )
        self.open_streams = Gauge(
            "ollama_host_open_streams",
            "Streams open now.",
            ["front"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.queue_length = Gauge(
            "ollama_host_queue_length",
            "Calls waiting now for a free slot that this upstream could serve.",
            ["upstream"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.in_flight = Gauge(
            "ollama_host_upstream_in_flight",
            "Calls an upstream is serving now.",
            ["upstream"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.up = Gauge(
            "ollama_host_upstream_up",
            "1 when the upstream's health check answers, else 0.",
            ["upstream"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.circuit = Gauge(
            "ollama_host_upstream_circuit",
            "1 for the upstream's circuit state now (closed, open, half-open), 0 for the others.",
            ["upstream", "state"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.loaded = Gauge(
            "ollama_host_upstream_loaded_models",
            "Models loaded in the upstream's memory, as its last health check found.",
            ["upstream"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.store_pending = Gauge(
            "ollama_host_store_pending_records",
            "Records appended but not yet safely stored.",
            [],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.store_degraded = Gauge(
            "ollama_host_store_degraded",
            "1 while the usage store is degraded (cannot write, or found damage).",
            [],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.store_dropped = Gauge(
            "ollama_host_store_dropped_records",
            "Records the store could not keep since the gateway started, as the store reports "
            "them (0 from a store that does not count them).",
            [],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.spans_dropped = Counter(
            "ollama_host_spans_dropped",
            "Trace spans the OTLP exporter could not deliver (--otlp).",
            [],
            registry=registry,
        )
        # Per kind of call, what it tallied since the last flush, and its labelled children.
        Key = tuple[str, str, str, str | None, str]
        self._tallies: dict[Key, _Tally] = {}
        self._children: dict[Key, _CallChildren] = {}
        # Streams open now, by front.
        self._open: dict[str, int] = {}

    # -- the pipeline's watcher (calls.pipeline.Watcher) --------------------------------------

    def admitted(self, account: Account) -> None:
        pass

    def stream_opened(self, account: Account) -> None:
        # A plain count, set into the gauge at each flush (the gauge's lock cost 10k
        # instructions a stream, each way).
        self._open[account.front] = self._open.get(account.front, 0) + 1

    def stream_closed(self, account: Account) -> None:
        self._open[account.front] -= 1

    def finished(self, account: Account, record: UsageRecord) -> None:
        # The request path: plain arithmetic on this kind of call's tally, which flush() hands
        # to prometheus_client (its lock and method per observation cost 70 us a call), written
        # out in line (a method call per observation doubled what this costs).
        key = (account.operation, account.front, record.model_name, record.upstream, record.status)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        tally.calls += 1
        # One flat list of bucket counts (each histogram's at its offset) and one of sums.
        counts, sums = tally.counts, tally.sums
        value: float = record.total_seconds
        counts[bisect_left(DURATION_BOUNDS, value)] += 1
        sums[0] += value
        gateway = record.gateway_seconds
        if gateway is not None:
            counts[AT_GATEWAY + bisect_left(GATEWAY_BOUNDS, gateway)] += 1
            sums[1] += gateway
        value = record.input_tokens or 0
        if value:
            counts[AT_INPUT + bisect_left(TOKEN_BOUNDS, value)] += 1
            sums[2] += value
        output = record.output_tokens
        if output:
            counts[AT_OUTPUT + bisect_left(TOKEN_BOUNDS, output)] += 1
            sums[3] += output
            if record.eval_seconds:
                value = record.eval_seconds / output
                counts[AT_TPOT + bisect_left(TPOT_BOUNDS, value)] += 1
                sums[5] += value
        ttft = record.ttft_seconds
        if ttft is not None and record.streamed:
            counts[AT_TTFT + bisect_left(TTFT_BOUNDS, ttft)] += 1
            sums[4] += ttft
        queue = record.queue_seconds
        if queue is not None:
            counts[AT_QUEUE + bisect_left(QUEUE_BOUNDS, queue)] += 1
            sums[6] += queue
        load = record.load_seconds
        if load is not None:
            counts[AT_LOAD + bisect_left(LOAD_BOUNDS, load)] += 1
            sums[7] += load
        # The record's GPU-seconds (upstreams.gputime); the upstream's time where a call has
        # none (a call made without a router, in a test).
        gpu = record.gpu_seconds
        if gpu is None:
            gpu = record.upstream_seconds
        if gpu:
            tally.gpu += gpu
        if record.cold_start:
            tally.cold += 1
            if record.evicted:
                tally.evicted.extend(record.evicted.split(", "))

    def flush(self) -> None:
        """Hand what the calls tallied since the last flush to prometheus_client (each second,
        and before every scrape)."""
        for front, count in self._open.items():
            self.open_streams.labels(front).set(count)
        tallies, self._tallies = self._tallies, {}
        for key, tally in tallies.items():
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = _CallChildren(self, key)
            children.add(tally)

    # -- gauges, sampled --------------------------------------------------------------------

    async def sample(self, upstream: Upstream, store: UsageStore) -> None:
        """Flush the calls' tallies, and set the gauges from what this process sees now."""
        self.flush()
        health = store.health()
        self.store_pending.set(health.pending)
        self.store_degraded.set(1 if health.status != "ok" else 0)
        self.store_dropped.set(health.dropped)
        try:
            async with asyncio.timeout(2):
                members = await upstream.health()
        except TimeoutError:
            return
        for member in members:
            name = member.name
            self.up.labels(name).set(1 if member.status == "up" else 0)
            self.in_flight.labels(name).set(member.in_flight)
            self.queue_length.labels(name).set(member.waiting or 0)
            self.loaded.labels(name).set(len(member.loaded or ()))
            state = member.circuit or "closed"
            for each in CIRCUIT_STATES:
                self.circuit.labels(name, each).set(1 if each == state else 0)

    async def keep_sampling(self, upstream: Upstream, store: UsageStore) -> None:
        """Sample every SAMPLE_SECONDS until cancelled (each worker, for its own share)."""
        while True:
            # A failing part shows in its own gauges at the next sample; sampling goes on.
            with contextlib.suppress(UpstreamError, StoreError, OSError):
                await self.sample(upstream, store)
            await asyncio.sleep(SAMPLE_SECONDS)

    def exposition(self) -> bytes:
        """The text format, made by prometheus_client: the whole gateway's numbers."""
        if multiproc.multiprocess():
            return multiproc.exposition()
        return generate_latest(self.registry)


class _Tally:
    """What calls of one kind (operation, front, model, upstream, status) added up since the
    last flush: their number, and per histogram the count in each bucket and the sum."""

    __slots__ = ("calls", "cold", "counts", "evicted", "gpu", "sums")

    def __init__(self) -> None:
        self.calls = 0
        self.gpu = 0.0
        self.cold = 0
        self.evicted: list[str] = []
        # Per histogram, in _CallChildren.histograms' order, the count in each bucket (its
        # own, as prometheus_client keeps them: the first bound >= the value), all in one list
        # at the histogram's offset, and the sum.
        self.counts = [0] * BUCKETS
        self.sums = [0.0] * len(ALL_BOUNDS)


class _CallChildren:
    """The labelled children one kind of call counts into: found once, not on every call."""

    __slots__ = ("calls", "cold", "evictions", "gpu", "histograms", "models", "upstream")

    def __init__(self, metrics: Metrics, key: tuple[str, str, str, str | None, str]) -> None:
        operation, front, model_name, upstream_name, status = key
        upstream = upstream_name or "none"
        model = metrics.models.label(canonical(model_name), answered=status == "ok")
        self.upstream = upstream
        self.evictions = metrics.evictions
        self.models = metrics.models
        self.calls = metrics.calls.labels(front, model, upstream, status)
        self.gpu = metrics.gpu_seconds.labels(upstream, model)
        self.cold = metrics.cold_starts.labels(upstream, model)
        # In _Tally's order: duration, gateway, tokens in, tokens out, ttft, tpot, queue, load.
        self.histograms = (
            metrics.request_duration.labels(operation, model, status),
            metrics.gateway.labels(front),
            metrics.token_usage.labels(operation, model, "input", upstream),
            metrics.token_usage.labels(operation, model, "output", upstream),
            metrics.ttft.labels(operation, model),
            metrics.tpot.labels(operation, model),
            metrics.queue.labels(upstream),
            metrics.load.labels(upstream, model),
        )

    def add(self, tally: _Tally) -> None:
        self.calls.inc(tally.calls)
        if tally.gpu:
            self.gpu.inc(tally.gpu)
        if tally.cold:
            self.cold.inc(tally.cold)
        for name in tally.evicted:
            evicted = self.models.label(canonical(name), answered=False)
            self.evictions.labels(self.upstream, evicted).inc()
        for histogram, bounds, offset, total in zip(
            self.histograms, ALL_BOUNDS, OFFSETS, tally.sums, strict=True
        ):
            counts = tally.counts[offset : offset + len(bounds)]
            if not total and not any(counts):
                continue
            # prometheus_client has no bulk observe: its own per-bucket values take the counts
            # (pinned by requirements.lock; tests/test_telemetry_metrics.py reads them back).
            histogram._sum.inc(total)
            for bucket, count in zip(histogram._buckets, counts, strict=True):
                if count:
                    bucket.inc(count)
