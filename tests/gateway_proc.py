"""Run the gateway as a user does, `python app.py ...`, under real uvicorn on a free port.

In-process ASGI transports buffer whole responses and skip the lifespan, so every
test that streams, cancels, or stops the server talks to one of these.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Every test gateway gets this admin token through its environment variable.
ADMIN_TOKEN = "test-admin-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(
    argv: list[str], log: Path, ready: str, *, seconds: float, said: Callable[[], str] | None = None
) -> Iterator[None]:
    """Run a server (`argv`, its output to `log`) until `ready` answers 200; terminated after
    (killed if it lingers). If it exits or is not ready within `seconds`, the error holds
    what it said (`said()`, or its log)."""
    name = Path(argv[0]).name
    out = open(log, "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + seconds
        while True:
            if proc.poll() is not None:
                output = said() if said else log.read_text()
                raise RuntimeError(f"{name} exited with {proc.returncode}: {output}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(ready, timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


class Gateway:
    """A running gateway process."""

    def __init__(
        self, args: list[str], data: Path, log: IO[str], proc: subprocess.Popen[bytes], port: int
    ) -> None:
        self.args = args
        self.data = data
        self._log = log
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.admin_token = ADMIN_TOKEN

    def logs(self) -> str:
        # The child writes straight to the file; nothing is buffered on this side.
        return Path(self._log.name).read_text()

    def client(self, *, admin: bool = True, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client for this gateway, holding the admin token unless admin=False."""
        headers = {"Authorization": f"Bearer {self.admin_token}"} if admin else {}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_gateway(
    data: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait: bool = True,
    command: list[str] | None = None,
    cwd: Path = ROOT,
) -> Gateway:
    """Start `python app.py --port P --data DATA ARGS...` (or `COMMAND --port P ...`); wait
    until /health answers."""
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = ["--port", str(port), "--data", str(data), *args]
    log = open(data.parent / f"gateway-{port}.log", "w+")  # noqa: SIM115 (closed in stop())
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")}
    full_env["OLLAMA_GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN
    full_env.update(env or {})
    proc = subprocess.Popen(
        [*(command or [sys.executable, str(ROOT / "app.py")]), *argv],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
    )
    gateway = Gateway(argv, data, log, proc, port)
    if wait:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode}:\n{gateway.logs()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(gateway.url + "/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                gateway.stop()
                raise RuntimeError(f"the gateway did not start:\n{gateway.logs()}")
            time.sleep(0.05)
    return gateway
