"""routes/health.py: is the gateway up, does Ollama answer, does the store write; in process
through httpx.ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from calls.upstream import UpstreamHealth
from ollama_host import __version__
from tests.asgi import STANDIN_URL, Local, in_process, unreachable
from tests.fakes import FakeUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
async def down(tmp_path: Path) -> AsyncIterator[tuple[Local, str]]:
    """A gateway in this process whose Ollama address has nothing listening, and that address."""
    async with unreachable(tmp_path / "data") as (local, address):
        yield local, address


async def test_health_says_all_good(aclient: httpx.AsyncClient) -> None:
    response = await aclient.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["gateway"] == "up"
    assert body["version"] == __version__
    assert body["ollama"] == {
        "status": "up",
        "address": STANDIN_URL,
        "version": "0.12.0",
        "error": None,
    }
    assert body["store"]["status"] == "ok"


async def test_health_tells_ollama_down_from_all_good(down: tuple[Local, str]) -> None:
    local, _ = down
    async with local.client() as client:
        response = await client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["gateway"], body["ollama"]["status"]) == ("degraded", "up", "down")
    assert body["ollama"]["error"]


async def test_health_says_degraded_when_ollama_is_down(down: tuple[Local, str]) -> None:
    local, closed = down
    async with local.client() as client:
        response = await client.get("/health")

    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "degraded"
    assert health["gateway"] == "up"
    assert health["ollama"]["status"] == "down"
    assert health["ollama"]["address"] == closed
    assert health["ollama"]["error"]
    assert health["store"]["status"] == "ok"


async def test_one_upstream_down_of_several_is_degraded(tmp_path: Path) -> None:
    states = [
        UpstreamHealth(name="a", kind="fake", address="fake://a", status="up", version="1"),
        UpstreamHealth(name="b", kind="fake", address="fake://b", status="down", error="gone"),
    ]
    async with (
        in_process(tmp_path / "data", upstream=FakeUpstream(health=states)) as local,
        local.client(admin=False) as anyone,
    ):
        response = await anyone.get("/health")

    body = response.json()
    assert body["status"] == "degraded"
    assert body["ollama"] == {"status": "up", "address": "fake://a", "version": "1", "error": None}
    assert [(u["name"], u["status"], u["error"]) for u in body["upstreams"]] == [
        ("a", "up", None),
        ("b", "down", "gone"),
    ]
