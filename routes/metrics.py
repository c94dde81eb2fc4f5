"""/metrics: the gateway's numbers in the Prometheus text format (telemetry/metrics.py).

Behind the admin token by default, like the rest of the admin surface: the numbers name the
models and upstreams, and the gateway may listen on a public address. Prometheus sends the
token with `authorization: {credentials_file: ...}` in its scrape config. With
--metrics-port it is served instead without a token on 127.0.0.1 at that port, for a
Prometheus on the same machine, and this route says where.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from calls.errors import CallError

from .common import gateway_of
from .openapi import ADMIN, UNAUTHORIZED, Operation, Paths, Reply, error

PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(request: Request) -> Response:
    counted = request.app.state.metrics
    settings = request.app.state.settings
    if counted is None:
        raise CallError(
            404,
            "metrics_off",
            "the gateway counts nothing for Prometheus: it was started with --no-metrics, or "
            "without the `metrics` extra (pip install 'ollama-host[metrics]')",
        )
    if settings.metrics_port:
        raise CallError(
            404,
            "metrics_elsewhere",
            f"/metrics is served on http://127.0.0.1:{settings.metrics_port}/metrics "
            "(--metrics-port)",
        )
    gateway = gateway_of(request)
    # This process's gauges as of now; the other workers' as of their last second.
    await counted.sample(gateway.upstream, gateway.store)
    return Response(counted.exposition(), media_type=CONTENT_TYPE)


routes = [Route(PATH, metrics, methods=["GET"])]

openapi: Paths = {
    PATH: {
        "GET": Operation(
            summary="The gateway's metrics, for Prometheus",
            tag="operations",
            description="The Prometheus text format (docs/monitoring.md lists every metric). "
            "Needs the admin token; 404 when counting is off (`--no-metrics`, or no `metrics` "
            "extra) or when `--metrics-port` serves it elsewhere.",
            replies={
                200: Reply(description="The metrics.", text=CONTENT_TYPE),
                401: UNAUTHORIZED,
                404: error("Counting is off, or /metrics is served on --metrics-port."),
            },
            auth=ADMIN,
        )
    }
}
