"""llama.cpp's `llama-server` with a real model (SmolLM2-135M), for the real-model tests.

scripts/llama-server prints the binary's and the model's paths, building the server once per
machine into a cache (about 7 minutes on 2 cores; later runs reuse it). Each server runs as
`llama-server -m GGUF --host 127.0.0.1 --port P -t 1 -c 2048 --parallel 2 --alias smollm2
--metrics`: one thread each, so that two fit this machine's two cores. With `embeddings`, it
also serves /v1/embeddings (`--embeddings --pooling mean`; it still answers chat and
completions).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import pytest

from tests.gateway_proc import ROOT, free_port

MODEL = "smollm2"


def binaries() -> tuple[Path, Path]:
    """(llama-server, the GGUF model), built or fetched once; skipped locally if that fails,
    failed in CI (CI=true), where these tests must run."""
    try:
        found = subprocess.run(
            [str(ROOT / "scripts" / "llama-server")],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        reason = f"scripts/llama-server could not provide llama-server: {exc}\n{stderr[-2000:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server, model = found.stdout.split()
    return Path(server), Path(model)


class LlamaServer:
    """One llama-server process on a loopback port; restartable on the same port."""

    def __init__(
        self,
        server: Path,
        model: Path,
        log: Path,
        port: int | None = None,
        *,
        embeddings: bool = False,
    ) -> None:
        self.server = server
        self.embeddings = embeddings
        self.model = model
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = log
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaServer:
        argv = [str(self.server), "-m", str(self.model), "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "-t", "1", "-c", "2048", "--parallel", "2"]
        argv += ["--alias", MODEL, "--metrics"]
        if self.embeddings:
            argv += ["--embeddings", "--pooling", "mean"]
        self._log = open(self._log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, seconds: float = 120.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited:\n{self.logs()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2, trust_env=False).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"llama-server was not ready in {seconds:g} s:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self._log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9, as a crashed or unplugged box."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- what the server says of itself ----------------------------------------------------

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=5, trust_env=False).text
        values = {}
        for line in text.splitlines():
            if line.startswith("llamacpp:"):
                name, _, value = line.partition(" ")
                values[name.removeprefix("llamacpp:")] = float(value)
        return values

    def busy_slots(self) -> int:
        slots: list[dict[str, Any]] = httpx.get(
            self.url + "/slots", timeout=5, trust_env=False
        ).json()
        return sum(1 for slot in slots if slot["is_processing"])

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running(folder: Path) -> Iterator[LlamaServer]:
    """One llama-server on the model, ready to answer (its log in `folder`); stopped after."""
    server, model = binaries()
    with LlamaServer(server, model, folder / "llama.log").start() as one:
        one.wait_ready()
        yield one
