"""--workers N: N gateway processes serving one port, for a machine with more than one core.

This process binds the port once and starts N workers (`python app.py worker FD PARENT_PID
ARGS...`), each a whole gateway accepting on the same listening socket, so the
kernel hands each connection to whichever worker accepts first. Everything the workers must
agree on is shared outside them: the usage records and keys in the database (--store), the
limits and stream tickets in Redis (--redis). Hence TinyDB is refused: its data folder is
written by one process, under a lock.

SIGTERM or Ctrl-C here is passed on to every worker as SIGTERM: each stops as a single
gateway does (the same grace period, every record written), and this process waits for
them.

A worker says when it is ready (its startup done, accepting) by writing a byte on a pipe of
its own. One that dies without ever having been ready, before any worker was, cannot start
at all (a setting, the database): then everything stops, with its exit status. Any other
worker that dies, whenever, is started again: once at once, and if it keeps dying, after
1, 2, 4 ... up to 30 s (a worker ready for 30 s starts the count again), so that a crash
loop costs little and never takes the healthy workers down.
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
from upstreams import describe

from .server import SHUTDOWN_MARGIN

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("ollama_host")

POLL_SECONDS = 0.1
PR_SET_PDEATHSIG = 1
# A worker dying again and again is started again after these waits: the first time at once,
# then 1, 2, 4 ... seconds, at most MAX_BACKOFF. Ready for STABLE_SECONDS, it is well again.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
STABLE_SECONDS = 30.0


def restart_delay(crashes: int) -> float:
    """Seconds before starting a worker again after its `crashes`-th death in a row."""
    if crashes <= 1:
        return 0.0
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (crashes - 2))


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
    """One worker process, and the pipe on which it says it is ready."""

    def __init__(self, script: Path, argv: list[str], fd: int, number: int) -> None:
        self.number = number
        self.ready_at: float | None = None
        read, write = os.pipe()
        try:
            command = [sys.executable, str(script), "worker", str(fd), str(os.getpid())]
            self.proc = subprocess.Popen(
                [*command, str(write), *argv],
                pass_fds=(fd, write),
                # Its own process group: a terminal's Ctrl-C reaches this process only, which
                # passes SIGTERM on. (A second signal would make uvicorn skip the grace period.)
                start_new_session=True,
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        os.set_blocking(read, False)
        self._ready_pipe: int | None = read

    def look(self) -> bool:
        """Note whether it said it is ready (a byte on its pipe; the pipe closes with it);
        True if it said so just now."""
        if self._ready_pipe is None:
            return False
        try:
            said = os.read(self._ready_pipe, 16)
        except BlockingIOError:
            return False
        if not said:  # it closed the pipe: ended, or said all it will
            self.close()
            return False
        if self.ready_at is None:
            self.ready_at = time.monotonic()
            return True
        return False

    def close(self) -> None:
        if self._ready_pipe is not None:
            os.close(self._ready_pipe)
            self._ready_pipe = None


class _Slot:
    """Worker number N: the process now, or when the next one starts, and its deaths in a row."""

    def __init__(self, worker: _Worker) -> None:
        self.worker: _Worker | None = worker
        self.crashes = 0
        self.restart_at = 0.0


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
    metrics_server: Served | None = None
    if counting and settings.metrics_port:
        try:
            metrics_server = serve_metrics(settings.metrics_port, multiproc.exposition)
        except OSError as exc:
            log.error("cannot serve metrics on port %d: %s", settings.metrics_port, exc)
            listener.close()
            if folder is not None:
                multiproc.remove(folder)
            return 1
    slots = [_Slot(_Worker(script, args, fd, n)) for n in range(settings.workers)]
    log.info(
        "Ollama Host on http://%s:%d with %d workers, asking %s",
        settings.host,
        settings.port,
        settings.workers,
        describe(settings),
    )
    status = 0
    served = False  # some worker has been ready: the settings and the parts can start
    while not stopping:
        time.sleep(POLL_SECONDS)
        now = time.monotonic()
        for n, slot in enumerate(slots):
            if stopping:
                break
            worker = slot.worker
            if worker is None:
                if now >= slot.restart_at:
                    slot.worker = _Worker(script, args, fd, n)
                continue
            if worker.look():
                log.info("worker %d serves (pid %d)", n, worker.proc.pid)
            code = worker.proc.poll()
            if code is None:
                if worker.ready_at is not None:
                    served = True
                    if slot.crashes and now - worker.ready_at >= STABLE_SECONDS:
                        slot.crashes = 0
                continue
            worker.look()  # it may have said it was ready just before it died
            worker.close()
            served = served or worker.ready_at is not None
            if worker.ready_at is None and not served:
                log.error("worker %d could not start (exit status %d); stopping", n, code)
                status = code or 1
                stopping.append(0)
                break
            slot.crashes += 1
            delay = restart_delay(slot.crashes)
            slot.worker, slot.restart_at = None, now + delay
            how = "after serving" if worker.ready_at is not None else "before it was ready"
            if delay:
                log.error(
                    "worker %d ended %s (exit status %d; %d times in a row); starting it again "
                    "in %g s",
                    n,
                    how,
                    code,
                    slot.crashes,
                    delay,
                )
            else:
                log.error("worker %d ended %s (exit status %d); starting it again", n, how, code)
            if counting:
                multiproc.worker_gone(worker.proc.pid)
    listener.close()
    workers = [slot.worker for slot in slots if slot.worker is not None]
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.grace + 3 * SHUTDOWN_MARGIN + 5
    for worker in workers:
        try:
            code = worker.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in time; killing it", worker.number)
            worker.proc.kill()
            code = worker.proc.wait()
        worker.close()
        if code not in (0, -signal.SIGTERM):
            status = status or 1
    if metrics_server is not None:
        metrics_server.close()
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
