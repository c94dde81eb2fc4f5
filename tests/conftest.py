from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.asgi import Local, in_process
from tests.gateway_proc import Gateway, start_gateway
from tests.ollama_standin import StandIn, start_standin


@pytest.fixture(scope="session")
def standin() -> Iterator[StandIn]:
    with start_standin() as server:
        yield server


@pytest.fixture(scope="session")
def gateway(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway most tests share: default settings but a short keep-alive."""
    data = tmp_path_factory.mktemp("gateway") / "data"
    with start_gateway(data, "--ollama", standin.url, "--keepalive", "0.2") as server:
        yield server
    assert "Traceback" not in server.logs(), server.logs()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    """A client of the shared gateway, holding the admin token."""
    with gateway.client() as client:
        yield client


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder that does not exist yet."""
    return tmp_path / "data"


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked anyio) run on asyncio, as the gateway does."""
    return "asyncio"


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Local]:
    """The gateway in this process with default settings, asking the stand-in."""
    async with in_process(tmp_path / "data") as app:
        yield app
