"""Proxy variables in the environment must not reroute the gateway's calls to Ollama."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway_proc import start_gateway
from tests.helpers import ask
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server


def test_proxy_variables_do_not_reroute_calls_to_ollama(standin: StandIn, data_dir: Path) -> None:
    # Port 9 (discard) has nothing listening: a call sent through this proxy would fail.
    proxy = "http://127.0.0.1:9"
    env = {name: proxy for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")}
    with (
        start_gateway(data_dir, "--ollama", standin.url, env=env) as gateway,
        gateway.client() as client,
    ):
        response = client.post("/api/v1/ai/ask_sync", json=ask(content="[[tokens=2]]"))

    assert response.status_code == 200, response.text
    assert response.text == "w0 w1 "
