"""nginx in front of several gateways, on loopback, for one test: Debian's nginx started with
a config file of the test's own (never the system's), stopped after.

Missing nginx: the tests that need it skip with the reason, and fail in CI (CI=true);
scripts/test installs it on a CI machine, as it does Chromium.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_proc import free_port, serving

NGINX = os.environ.get("NGINX", shutil.which("nginx") or "/usr/sbin/nginx")

CONFIG = """
daemon off;
master_process off;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream gateways {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            # Streams go through as they come: no buffering of SSE.
            proxy_buffering off;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


def require() -> None:
    if Path(NGINX).exists():
        return
    reason = f"no nginx at {NGINX} (apt-get install nginx)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs nginx for these tests: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def nginx(folder: Path, ports: list[int]) -> Iterator[str]:
    """nginx on a free loopback port, balancing over the gateways on `ports`; its URL."""
    require()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in ports)
    config = folder / "nginx.conf"
    config.write_text(CONFIG.format(prefix=folder, servers=servers, port=port))

    def said() -> str:
        errors = folder / "error.log"
        text = (folder / "stdout.log").read_text()
        return text + (errors.read_text() if errors.exists() else "")

    url = f"http://127.0.0.1:{port}"
    argv = [NGINX, "-p", str(folder), "-c", str(config)]
    with serving(argv, folder / "stdout.log", url + "/health", seconds=15, said=said):
        yield url
