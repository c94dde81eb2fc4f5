"""A flood of request headers that never end, and the gateway's memory before, during and
after it.

    .venv/bin/python -m bench.header_flood                      # this checkout
    .venv/bin/python -m bench.header_flood --root /work/base    # another checkout

20 connections (--connections) each send a request line and then header lines, 20 MB of
them (--megabytes), as fast as the gateway reads them, never the blank line that ends a
head. Reported: the gateway's RSS after a warm-up (before), its peak while the flood runs
(during, sampled every 20 ms) and once every flooding connection has closed (after), what
each connection got back, and how long /health took to answer during the flood.
`flood` is also what the fault test of the same name uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.gateway_bench import ADMIN_TOKEN, PYTHON, free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
_LINE = b"X-Flood: " + b"a" * 1000 + b"\r\n"
_BLOCK = _LINE * 64  # about 64 KB a send


@dataclass
class Flood:
    """What one flooding connection sent, and what came back before it closed."""

    sent: int = 0
    answer: bytes = b""
    closed: bool = False


def flood_one(port: int, size: int, seconds: float = 60.0) -> Flood:
    """Send a request line and `size` bytes of header lines, never ending the head, as a
    flooder would: on and on whatever comes back (which is kept), until the gateway closes
    the connection or all is sent; then wait for the gateway to close it."""
    result = Flood()
    end = time.monotonic() + seconds
    reading = True
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setblocking(False)
        pending = memoryview(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while time.monotonic() < end:
            watch = [sock] if reading else []
            writing = [sock] if result.sent < size else []
            if not (watch or writing):
                break
            readable, writable, _ = select.select(watch, writing, [], 1.0)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    result.answer += data
                else:
                    result.closed = True
                    reading = False
            if writable:
                if not pending:
                    pending = memoryview(_BLOCK)
                try:
                    sent = sock.send(pending)
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    result.closed = True
                    break
                result.sent += sent
                pending = pending[sent:]
    return result


def flood(port: int, connections: int, size: int) -> list[Flood]:
    """`connections` floods at once, each in a thread; what each got."""
    results = [Flood() for _ in range(connections)]

    def one(i: int) -> None:
        results[i] = flood_one(port, size)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def rss(pid: int) -> int:
    """The process's resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Peak:
    pid: int
    peak: int = 0
    health_ms: list[float] = field(default_factory=list)
    _running: bool = True

    @contextlib.contextmanager
    def watching(self, url: str) -> Iterator[None]:
        def sample() -> None:
            while self._running:
                self.peak = max(self.peak, rss(self.pid))
                time.sleep(0.02)

        def health() -> None:
            while self._running:
                started = time.monotonic()
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=30):
                    self.health_ms.append((time.monotonic() - started) * 1000)
                time.sleep(0.2)

        threads = [threading.Thread(target=sample), threading.Thread(target=health)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self._running = False
            for thread in threads:
                thread.join()


def status(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(nothing)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose gateway runs")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--megabytes", type=float, default=20.0, help="of headers, each")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="header-flood-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [PYTHON, "app.py", "--port", str(port), "--data", str(workdir / "data")]
    # Nothing listens there: the flood never reaches an upstream.
    argv += ["--ollama", f"http://127.0.0.1:{free_port()}", "--log-level", "warning"]
    log = (workdir / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        argv,
        cwd=args.root.resolve(),
        env={**os.environ, "OLLAMA_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
        stdout=log,
        stderr=log,
    )
    try:
        wait_ready(gateway, url + "/health", "the gateway")
        for _ in range(200):  # warm: the first requests import and allocate what all need
            urllib.request.urlopen(url + "/health", timeout=10).close()
        before = rss(gateway.pid)
        watch = Peak(gateway.pid)
        started = time.monotonic()
        with watch.watching(url + "/health"):
            results = flood(port, args.connections, int(args.megabytes * 2**20))
        seconds = time.monotonic() - started
        after = rss(gateway.pid)
        time.sleep(2)
        settled = rss(gateway.pid)
    finally:
        stop(gateway)
    answers: dict[str, int] = {}
    for result in results:
        answers[status(result.answer)] = answers.get(status(result.answer), 0) + 1
    report = {
        "root": str(args.root.resolve()),
        "connections": args.connections,
        "sent_mb_least": round(min(r.sent for r in results) / 2**20, 1),
        "sent_mb_most": round(max(r.sent for r in results) / 2**20, 1),
        "answers": answers,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_during_peak_mb": round(watch.peak / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "rss_2s_after_mb": round(settled / 2**20, 1),
        "flood_seconds": round(seconds, 1),
        "health_during_max_ms": round(max(watch.health_ms, default=float("nan")), 1),
        "health_answers_during": len(watch.health_ms),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
