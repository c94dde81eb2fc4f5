"""An OTLP/HTTP trace receiver for one test: takes POST /v1/traces on a free loopback port and
decodes each body with the OpenTelemetry SDK's own protobuf types (opentelemetry-proto), as a
collector would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def plain(value: AnyValue) -> Any:
    """An attribute's value as Python."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class Received:
    """A span as it arrived, with its attributes as a dict and its ids in hex."""

    def __init__(self, span: Span, service: str | None) -> None:
        self.name = span.name
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.kind = span.kind
        self.start = span.start_time_unix_nano
        self.end = span.end_time_unix_nano
        self.status = span.status.code
        self.attributes = {a.key: plain(a.value) for a in span.attributes}
        self.service = service


class Receiver:
    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.url = ""

    def wait_for(self, count: int, seconds: float = 20) -> list[Received]:
        deadline = time.monotonic() + seconds
        while True:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            assert time.monotonic() < deadline, f"{len(self.spans)} spans of {count} arrived"
            time.sleep(0.05)


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            found: list[Received] = []
            for resource in request.resource_spans:
                service = next(
                    (
                        plain(a.value)
                        for a in resource.resource.attributes
                        if a.key == "service.name"
                    ),
                    None,
                )
                for scope in resource.scope_spans:
                    found.extend(Received(span, service) for span in scope.spans)
            with receiver.lock:
                receiver.spans.extend(found)
                receiver.requests += 1
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    # Polled often, so that leaving the block does not wait half a second (the default).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
