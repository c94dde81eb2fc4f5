"""Limits shared through Redis (access/redis_shared.py) when Redis fails: every failure falls
back to this gateway's own counts, and each admission decided that way is reported.

Redis fails through a TCP proxy of the test's own (tests/tcp_proxy.py), never the machine's
server: cut (connections reset, then refused) or reset (connections reset, new ones
accepted).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests import redis_server
from tests.gateway_proc import ADMIN_TOKEN, start_gateway
from tests.helpers import ask
from tests.ollama_standin import StandIn
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Accept": "application/json"}


@pytest.mark.server
def test_each_admission_decided_without_redis_shows_in_health_and_its_log_line(
    standin: StandIn, tmp_path: Path
) -> None:
    redis_server.require()
    with TcpProxy("127.0.0.1", 6379) as proxy:
        args = ["--ollama", standin.url, "--redis", redis_server.through(proxy.port)]
        with start_gateway(tmp_path / "data", *args, "--key-rpm", "100") as gateway:
            key = httpx.post(
                f"{gateway.url}/api/v1/admin/keys", json={"label": "k"}, headers=ADMIN
            ).json()["key"]
            holder = {**JSON, "Authorization": f"Bearer {key}"}

            def asked() -> str:
                answered = httpx.post(
                    f"{gateway.url}/api/v1/ai/ask_sync", json=ask(), headers=holder
                )
                assert answered.status_code == 200, answered.text
                return str(answered.headers["x-request-id"])

            shared = asked()
            before = httpx.get(f"{gateway.url}/health").json()["limits"]
            proxy.cut()
            alone = [asked() for _ in range(3)]
            after = httpx.get(f"{gateway.url}/health").json()["limits"]
            logs = gateway.logs()

    assert (before["local_admissions"], before["last_local_admission"]) == (0, None)
    assert after["status"] == "degraded"
    assert after["local_admissions"] == 3
    assert after["last_local_admission"] is not None
    lines = {
        line.split("id=")[1].split()[0]: line
        for line in logs.splitlines()
        if " request id=" in line
    }
    assert "limits=local" not in lines[shared]
    assert all("limits=local" in lines[request] for request in alone)
    assert "admission(s) decided by this gateway's own counts" in logs
    assert "Traceback" not in logs
