"""The gateway in a team's monitoring: Prometheus metrics (telemetry/metrics.py), what
--workers N needs for them (telemetry/multiproc.py) and --metrics-port (telemetry/serving.py);
trace spans over OTLP (telemetry/tracing.py).

Both are optional extras (`metrics`: prometheus_client; `otel`: the OpenTelemetry SDK), so a
workstation install stays lean: without the `metrics` extra, `open_metrics` gives None and the
gateway counts nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .metrics import Metrics
    from .tracing import Tracing


class Wanted(Protocol):
    @property
    def no_metrics(self) -> bool: ...

    @property
    def otlp(self) -> str | None: ...

    @property
    def otlp_content(self) -> bool: ...


def open_metrics(settings: Wanted) -> Metrics | None:
    """The metrics, unless turned off (--no-metrics) or prometheus_client is not installed."""
    if settings.no_metrics:
        return None
    try:
        from .metrics import Metrics
    except ImportError:
        return None
    return Metrics()


def open_tracing(settings: Wanted, metrics: Metrics | None) -> Tracing | None:
    """The traces, with --otlp (the settings checked that the `otel` extra is installed)."""
    if settings.otlp is None:
        return None
    from .tracing import Tracing

    return Tracing(
        settings.otlp,
        content=settings.otlp_content,
        dropped=None if metrics is None else metrics.spans_dropped.inc,
    )
