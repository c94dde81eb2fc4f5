"""--workers N and the metrics: one folder the workers write their numbers to, which /metrics
reads whole (prometheus_client's multiprocess mode).

The process that runs the workers makes a fresh folder before it starts them and names it in
PROMETHEUS_MULTIPROC_DIR, which they inherit (prometheus_client reads it when it is first
imported, so it must be set before). When a worker dies, its live gauges are dropped
(`mark_process_dead`); its counters stay, since what it counted happened. The folder goes when
the gateway stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    """Whether this process shares its numbers with others (--workers N)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def installed() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def prepare() -> Path:
    """A fresh folder for the workers' numbers, named in this process's environment."""
    folder = Path(tempfile.mkdtemp(prefix="ollama-host-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def worker_gone(pid: int) -> None:
    """A worker ended: its gauges no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def remove(folder: Path) -> None:
    os.environ.pop(MULTIPROC_ENV, None)
    with contextlib.suppress(OSError):
        shutil.rmtree(folder)


def exposition() -> bytes:
    """Every worker's numbers, added up, in the text format (for --metrics-port, served by
    the process that runs the workers)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
