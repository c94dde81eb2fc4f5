"""--otlp: a span per call, with the GenAI attributes and child spans, exported to an OTLP
receiver in the test (tests/otlp_receiver.py decodes with the SDK's own protobuf types)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.asgi import in_process
from tests.gateway_proc import ROOT, free_port
from tests.helpers import unique
from tests.otlp_receiver import otlp_receiver

pytestmark = pytest.mark.anyio

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
CHAT = {"model": "llama3", "stream": False, "messages": [{"role": "user", "content": "secret hi"}]}


async def test_a_call_is_a_span_in_the_callers_trace(tmp_path: Path) -> None:
    project = unique("otel")
    with otlp_receiver() as receiver:
        async with (
            in_process(tmp_path / "data", "--otlp", receiver.url) as local,
            local.client() as client,
        ):
            client.headers["X-Project"] = project
            response = await client.post(
                "/api/chat", json=CHAT, headers={"traceparent": TRACEPARENT}
            )
            streamed = await client.post(
                "/api/chat", json={**CHAT, "stream": True, "model": "qwen"}
            )
            calls = await local.standin_calls()
            records = (
                await client.get("/api/v1/admin/dashboard", params={"project": project})
            ).json()
        # The lifespan's end flushed every span: two calls, each with its upstream and store
        # (one server in process, so no queue).
        spans = receiver.wait_for(6)

    assert response.status_code == streamed.status_code == 200
    by_name = {s.name: s for s in spans}
    call = by_name["chat llama3"]
    record = next(r for r in records if r["model_name"] == "llama3")
    assert call.service == "ollama-host"
    assert call.kind == Span.SPAN_KIND_SERVER
    assert (call.trace_id, call.parent_id) == (CALLER_TRACE, CALLER_SPAN)
    assert call.attributes["gen_ai.operation.name"] == "chat"
    assert call.attributes["gen_ai.request.model"] == "llama3"
    assert call.attributes["gen_ai.response.model"] == "llama3"
    assert call.attributes["gen_ai.usage.input_tokens"] == record["input_tokens"]
    assert call.attributes["gen_ai.usage.output_tokens"] == record["output_tokens"]
    assert call.attributes["gen_ai.response.finish_reasons"] == [record["done_reason"]]
    assert call.attributes["server.address"] == "http://ollama.test:11434"
    assert call.status != Status.STATUS_CODE_ERROR
    # Children: the upstream and the store, inside the call's span and its time.
    children = [s for s in spans if s.parent_id == call.span_id]
    assert {c.name for c in children} == {"upstream", "store"}
    for child in children:
        assert child.trace_id == CALLER_TRACE
        assert call.start <= child.start <= child.end <= call.end
    # The upstream was asked inside the same trace, the gateway's span its parent.
    asked = next(c for c in calls if c["model"] == "llama3")
    assert asked["traceparent"] == f"00-{CALLER_TRACE}-{call.span_id}-01"
    # No prompt or answer unless asked for.
    assert not any("secret" in str(s.attributes) for s in spans)
    # A call without a traceparent starts a trace of its own, still passed on.
    own = by_name["chat qwen"]
    assert own.parent_id == ""
    assert next(c for c in calls if c["model"] == "qwen")["traceparent"].startswith(
        f"00-{own.trace_id}-{own.span_id}-"
    )


async def test_content_goes_into_spans_only_when_asked(tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        async with (
            in_process(tmp_path / "data", "--otlp", receiver.url, "--otlp-content") as local,
            local.client() as client,
        ):
            await client.post("/api/chat", json=CHAT)
        spans = receiver.wait_for(3)

    call = next(s for s in spans if s.name == "chat llama3")
    assert "secret hi" in call.attributes["gen_ai.input.messages"]
    assert call.attributes["gen_ai.output.messages"]


async def test_a_failed_call_is_an_error_span(tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        async with (
            in_process(tmp_path / "data", "--otlp", receiver.url) as local,
            local.client() as client,
        ):
            response = await client.post(
                "/api/chat",
                json={**CHAT, "messages": [{"role": "user", "content": "[[status=500]]"}]},
            )
        spans = receiver.wait_for(2)

    call = next(s for s in spans if s.name == "chat llama3")
    assert response.status_code >= 500
    assert call.status == Status.STATUS_CODE_ERROR
    assert call.attributes["error.type"]


async def test_a_collector_that_does_not_answer_costs_spans_not_calls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.WARNING, "ollama_host.traces")
    # The exporter retries a refused connection after 1 s and 2 s while its bound allows:
    # a bound shorter than the first wait gives up after the first try, the same way.
    monkeypatch.setattr("telemetry.tracing.EXPORT_SECONDS", 0.5)
    async with in_process(tmp_path / "data", "--otlp", nobody) as local, local.client() as client:
        statuses = [(await client.post("/api/chat", json=CHAT)).status_code for _ in range(3)]
        tracing = next(w for w in local.gateway.watchers if hasattr(w, "spans_dropped"))
    # Stopped: what was queued was tried, and dropped.
    metrics = local.app.state.metrics

    assert statuses == [200, 200, 200]
    assert tracing.spans_dropped >= 3
    assert metrics.spans_dropped._value.get() == tracing.spans_dropped
    told = [r for r in caplog.records if "does not take spans" in r.getMessage()]
    assert len(told) == 1


@pytest.mark.parametrize(
    ("value", "said"),
    [("127.0.0.1:4318", "--otlp must be the collector's OTLP/HTTP address"), ("ftp://x", "--otlp")],
)
def test_a_bad_otlp_address_stops_the_start(value: str, said: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--otlp", value],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )

    assert done.returncode == 2
    assert said in done.stderr
