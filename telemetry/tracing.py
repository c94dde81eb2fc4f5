"""--otlp: a trace span per call, exported by the OpenTelemetry SDK over OTLP/HTTP.

Each call gets a server span named `{operation} {model}` ("chat llama3") with the GenAI
conventions' attributes (`gen_ai.operation.name`, `gen_ai.request.model`,
`gen_ai.response.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
`gen_ai.response.finish_reasons`, `server.address`), and child spans for the wait in the queue,
the upstream and the store. An incoming `traceparent` is honoured (the span sits in the
caller's trace) and passed on to the upstream with the gateway's span as its parent.
Prompts and answers go into spans only with --otlp-content.

Export runs in the SDK's own thread (BatchSpanProcessor), never on the event loop. A collector
that does not answer costs the gateway nothing but the spans: they are dropped and counted
(`ollama_host_spans_dropped_total`), and that is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from calls.exchange import traceparent

if TYPE_CHECKING:
    from calls.record import Account
    from store.records import UsageRecord

log = logging.getLogger("ollama_host.traces")
_propagator = TraceContextTextMapPropagator()
_encode = msgspec.json.Encoder().encode
# Seconds an export may take, retries included, before its spans count as dropped.
EXPORT_SECONDS = 5.0


class _Counting(SpanExporter):
    """The OTLP exporter, counting the spans it could not deliver and saying so once."""

    def __init__(self, inner: SpanExporter, url: str, dropped: Callable[[int], None]) -> None:
        self.inner = inner
        self.url = url
        self.dropped = dropped
        self.told = False
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.dropped(len(spans))
            with self.lock:
                tell, self.told = not self.told, True
            if tell:
                log.warning(
                    "the OTLP collector at %s does not take spans; they are dropped and "
                    "counted (ollama_host_spans_dropped_total), and the gateway serves on. "
                    "Said once.",
                    self.url,
                )
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def traces_url(endpoint: str) -> str:
    """Where OTLP/HTTP takes traces, for a collector's base address (as the standard
    OTEL_EXPORTER_OTLP_ENDPOINT names it) or its full /v1/traces address."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    """The pipeline's watcher for traces (calls.pipeline.Watcher)."""

    def __init__(
        self,
        endpoint: str,
        *,
        content: bool = False,
        dropped: Callable[[int], None] | None = None,
        delay_ms: int = 1000,
    ) -> None:
        self.url = traces_url(endpoint)
        self.content = content
        self.spans_dropped = 0
        self._count = dropped
        # The SDK's exporter logs every failed try; this module says it once instead.
        logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
        exporter = _Counting(
            OTLPSpanExporter(endpoint=self.url, timeout=EXPORT_SECONDS), self.url, self._dropped
        )
        self.provider = TracerProvider(resource=Resource.create({"service.name": "ollama-host"}))
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms, max_queue_size=4096)
        )
        self.tracer = self.provider.get_tracer("ollama_host")
        # Upstream names -> addresses, for server.address (set by the app once it knows).
        self.addresses: Mapping[str, str] = {}

    def _dropped(self, spans: int) -> None:
        self.spans_dropped += spans
        if self._count is not None:
            self._count(spans)

    def close(self) -> None:
        self.provider.shutdown()

    # -- the watcher -------------------------------------------------------------------------

    def admitted(self, account: Account) -> None:
        parent: Context | None = None
        if account.trace is not None:
            parent = _propagator.extract({"traceparent": account.trace})
        # perf_counter -> the wall clock the spans are in, anchored now.
        clock = _Clock()
        model = account.request.model
        span = self.tracer.start_span(
            f"{account.operation} {model}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=clock.wall(account.timing.received),
            attributes={
                "gen_ai.operation.name": account.operation,
                "gen_ai.request.model": model,
                "ollama_host.front": account.front,
                "ollama_host.call_id": account.id,
            },
        )
        account.span = (span, clock)
        context = span.get_span_context()
        if context.is_valid:
            # The upstream sees the gateway's span as the parent of its own work.
            traceparent.set(
                b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags)
            )

    def stream_opened(self, account: Account) -> None:
        pass

    def stream_closed(self, account: Account) -> None:
        pass

    def finished(self, account: Account, record: UsageRecord) -> None:
        held = account.span
        if held is None:
            return
        account.span = None
        span, clock = held
        end = time.perf_counter()
        attributes: dict[str, Any] = {
            "gen_ai.response.model": record.model_name,
            "ollama_host.status": record.status,
            "ollama_host.streamed": record.streamed,
        }
        if record.input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = record.input_tokens
        if record.output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = record.output_tokens
        if record.done_reason:
            attributes["gen_ai.response.finish_reasons"] = [record.done_reason]
        if record.upstream is not None:
            attributes["ollama_host.upstream"] = record.upstream
            attributes["server.address"] = self.addresses.get(record.upstream, record.upstream)
        if record.gateway_seconds is not None:
            attributes["ollama_host.gateway_seconds"] = record.gateway_seconds
        if record.queue_seconds is not None:
            attributes["ollama_host.queue_seconds"] = record.queue_seconds
        if record.cold_start is not None:
            attributes["ollama_host.cold_start"] = record.cold_start
        if self.content:
            attributes["gen_ai.input.messages"] = _encode(record.input).decode()
            attributes["gen_ai.output.messages"] = record.output
        span.set_attributes(attributes)
        if record.status != "ok":
            span.set_attribute("error.type", record.error_code or record.status)
            span.set_status(StatusCode.ERROR, record.error or record.status)
        inside = set_span_in_context(span)
        timing = account.timing
        began = timing.upstream_began
        queue = account.queue_seconds
        if began is not None and queue:
            self._child("queue", inside, clock, began, began + queue)
        if began is not None:
            start = began + (queue or 0.0)
            upstream_end = timing.upstream_ended or end
            about = {}
            if record.upstream is not None:
                about = {"server.address": attributes["server.address"]}
            self._child("upstream", inside, clock, start, max(start, upstream_end), about)
        if timing.store_ended:
            self._child("store", inside, clock, timing.store_began, timing.store_ended)
        span.end(end_time=clock.wall(end))

    def _child(
        self,
        name: str,
        parent: Context,
        clock: _Clock,
        start: float,
        end: float,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        child = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.INTERNAL,
            start_time=clock.wall(start),
            attributes=attributes,
        )
        child.end(end_time=clock.wall(end))


class _Clock:
    """time.perf_counter() readings as the wall-clock nanoseconds spans are in."""

    __slots__ = ("perf", "wall_ns")

    def __init__(self) -> None:
        self.wall_ns = time.time_ns()
        self.perf = time.perf_counter()

    def wall(self, perf: float) -> int:
        return self.wall_ns + int((perf - self.perf) * 1e9)
