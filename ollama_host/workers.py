"""--workers N: N gateway processes serving one port, for a machine with more than one core.

This process binds the port once and starts N workers (`python app.py worker FD PARENT_PID
ARGS...`), each a whole gateway accepting on the same listening socket, so the
kernel hands each connection to whichever worker accepts first. Everything the workers must
agree on is shared outside them: the usage records and keys in the database (--store), the
limits and stream tickets in Redis (--redis). Hence TinyDB is refused: its data folder is
written by one process, under a lock.

SIGTERM or Ctrl-C here is passed on to every worker as SIGTERM: each stops as a single
gateway does (the same grace period, every record written), and this process waits for
them. A worker that dies on its own is started again, unless it dies straight after
starting, which means it cannot start at all: then everything stops, with its exit status.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from store import shared
from telemetry import multiproc
from telemetry.serving import Served, serve_metrics

from .server import SHUTDOWN_MARGIN

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("ollama_host")

# A worker that exits sooner than this after starting is not restarted: it cannot start.
STARTUP_SECONDS = 10.0
POLL_SECONDS = 0.1
PR_SET_PDEATHSIG = 1


def refuse_workers(settings: Settings) -> str | None:
    """Why these settings cannot run several workers, or None."""
    if settings.workers > 1 and not shared(settings.store):
        return (
            f"--workers {settings.workers} needs a store the workers can share: TinyDB's data "
            "folder is written by one process only (it is locked). Keep usage records and keys "
            "in PostgreSQL with --store postgresql://..., or run one worker"
        )
    return None


class _Worker:
    def __init__(self, script: Path, argv: list[str], fd: int, number: int) -> None:
        self.number = number
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "worker", str(fd), str(os.getpid()), *argv],
            pass_fds=(fd,),
            # Its own process group: a terminal's Ctrl-C reaches this process only, which
            # passes SIGTERM on. (A second signal would make uvicorn skip the grace period.)
            start_new_session=True,
        )


def run_workers(settings: Settings, argv: Sequence[str] | None, *, script: Path) -> int:
    """Serve with settings.workers processes, each running `script` (app.py), until SIGTERM
    or Ctrl-C; the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        listener = socket.create_server(
            (settings.host.strip("[]"), settings.port),
            family=socket.AF_INET6 if ":" in settings.host else socket.AF_INET,
            backlog=2048,
        )
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    listener.set_inheritable(True)
    fd = listener.fileno()
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    # The metrics: each worker writes its numbers to one folder, which /metrics adds up.
    counting = not settings.no_metrics and multiproc.installed()
    folder = multiproc.prepare() if counting else None
    served: Served | None = None
    if counting and settings.metrics_port:
        try:
            served = serve_metrics(settings.metrics_port, multiproc.exposition)
        except OSError as exc:
            log.error("cannot serve metrics on port %d: %s", settings.metrics_port, exc)
            listener.close()
            if folder is not None:
                multiproc.remove(folder)
            return 1
    workers = [_Worker(script, args, fd, n) for n in range(settings.workers)]
    log.info(
        "Ollama Host on http://%s:%d with %d workers, asking Ollama at %s",
        settings.host,
        settings.port,
        settings.workers,
        settings.ollama_url,
    )
    status = 0
    while not stopping:
        time.sleep(POLL_SECONDS)
        for n, worker in enumerate(workers):
            code = worker.proc.poll()
            if code is None or stopping:
                continue
            if time.monotonic() - worker.started < STARTUP_SECONDS:
                log.error("worker %d could not start (exit status %d); stopping", n, code)
                status = code or 1
                stopping.append(0)
                break
            log.error("worker %d ended (exit status %d); starting it again", n, code)
            if counting:
                multiproc.worker_gone(worker.proc.pid)
            workers[n] = _Worker(script, args, fd, n)
    listener.close()
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.grace + 3 * SHUTDOWN_MARGIN + 5
    for n, worker in enumerate(workers):
        try:
            code = worker.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in time; killing it", n)
            worker.proc.kill()
            code = worker.proc.wait()
        if code not in (0, -signal.SIGTERM):
            status = status or 1
    if served is not None:
        served.close()
    if folder is not None:
        multiproc.remove(folder)
    return status


def die_with(parent: int) -> None:
    """Have the kernel send SIGTERM here when the parent dies, even by kill -9: a worker
    must not serve on, unseen, after the process that manages it is gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)
