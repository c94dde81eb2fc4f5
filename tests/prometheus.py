"""A real Prometheus server for one test: Debian's `prometheus`, started on a free loopback
port with a config of the test's own (never the system's), scraping the gateway every
second with its admin token, and stopped after.

Missing prometheus: the tests that need it skip with the reason, and fail in CI (CI=true);
scripts/test installs it on a CI machine, as it does nginx.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import free_port, serving

PROMETHEUS = os.environ.get("PROMETHEUS", shutil.which("prometheus") or "/usr/bin/prometheus")

CONFIG = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: gateway
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
{auth}
"""

AUTH = """    authorization:
      type: Bearer
      credentials_file: {token_file}
"""


def require() -> None:
    if Path(PROMETHEUS).exists():
        return
    reason = f"no prometheus at {PROMETHEUS} (apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs prometheus for these tests: {reason}")
    pytest.skip(reason)


class Prometheus:
    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder

    def logs(self) -> str:
        return (self.folder / "prometheus.log").read_text()

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API: its vector's samples."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expression: str) -> float | None:
        """The one value of a query whose vector has at most one sample (None: none)."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> bool:
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
        targets = response["data"]["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def eventually(self, check: Callable[[], bool], what: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, f"{what}, within {seconds} s:\n{self.logs()}"
            time.sleep(0.25)


@contextlib.contextmanager
def prometheus(folder: Path, target: str, *, token: str | None) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping http://TARGET/metrics (with `token` as
    the bearer token, from a file, as an operator would configure it)."""
    require()
    folder.mkdir(parents=True, exist_ok=True)
    auth = ""
    if token is not None:
        token_file = folder / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        auth = AUTH.format(token_file=token_file)
    config = folder / "prometheus.yml"
    config.write_text(CONFIG.format(target=target, auth=auth))
    port = free_port()
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    url = f"http://127.0.0.1:{port}"
    with serving(argv, folder / "prometheus.log", url + "/-/ready", seconds=30):
        yield Prometheus(url, folder)
