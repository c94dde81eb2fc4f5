"""Fixtures every test module may use, and the `slow` marker.

`slow` marks every test that needs a real process or server: a gateway under uvicorn, the
Ollama stand-in's server, a fault upstream, a browser, a database, a server in a thread timed
on a real socket. `scripts/test --fast` runs the rest (`pytest -m "not slow"`); plain
`scripts/test` runs everything.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests import pg
from tests.asgi import Keyed, Local, gateway_log, in_process, logged
from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import Keys
from tests.llama import LlamaServer, running
from tests.ollama_standin import StandIn, start_standin
from tests.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# Markers whose tests need a real process, and fixtures that start one: each makes a test slow.
SLOW_MARKERS = ("server", "browser", "faults", "model", "postgres", "redis")
PROCESS_FIXTURES = frozenset({"standin", "gateway", "browser", "llama"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if any(item.get_closest_marker(name) for name in SLOW_MARKERS) or uses & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.slow)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under -m "not slow" (scripts/test --fast), a test module whose `pytestmark` names a
    slow marker is not even imported: each of its tests would be deselected, and importing
    them (the real clients' SDKs, Playwright, the databases' drivers) took seconds of every
    quick loop. The plain run imports and runs them as before."""
    if config.getoption("markexpr", "").strip() != "not slow":
        return None
    if not (collection_path.name.startswith("test_") and collection_path.suffix == ".py"):
        return None
    return True if module_marks(collection_path) & {"slow", *SLOW_MARKERS} else None


def module_marks(path: Path) -> set[str]:
    """The names of the marks a test module gives all its tests (`pytestmark = pytest.mark.X`
    or a list of them, read from the source); empty when it sets none in a form read here."""
    marks: set[str] = set()
    for node in ast.parse(path.read_bytes(), str(path)).body:
        if not (
            isinstance(node, ast.Assign)
            and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["pytestmark"]
        ):
            continue
        values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
        marks = set()  # the last assignment is the one pytest sees
        for value in values:
            mark = value.func if isinstance(value, ast.Call) else value
            if (
                isinstance(mark, ast.Attribute)
                and isinstance(mark.value, ast.Attribute)
                and mark.value.attr == "mark"
                and isinstance(mark.value.value, ast.Name)
                and mark.value.value.id == "pytest"
            ):
                marks.add(mark.attr)
    return marks


@pytest.fixture(scope="session", autouse=True)
def spill_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Spilled records and PostgreSQL's files of pending records (store/spill.py) go to a
    folder of the test session's own, never the user's $XDG_STATE_HOME; the gateways the
    tests start inherit it."""
    state = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(state))
        yield state / "ollama-host" / "spill"


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


@pytest.fixture(scope="module")
def gateway_keys(
    standin: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Keys]]:
    """For the real clients' tests (test_clients*.py): a gateway of each module's own, with a
    key made (`Keys.main`), so that asking needs one, for good."""
    data = tmp_path_factory.mktemp("clients") / "data"
    with start_gateway(data, "--ollama", standin.url, "--keepalive", "0.2") as server:
        yield server, Keys(server)
    assert "Traceback" not in server.logs(), server.logs()


@pytest.fixture
def gw(gateway_keys: tuple[Gateway, Keys]) -> Gateway:
    return gateway_keys[0]


@pytest.fixture
def keys(gateway_keys: tuple[Gateway, Keys]) -> Keys:
    return gateway_keys[1]


@pytest.fixture
def admin(gw: Gateway) -> Iterator[httpx.Client]:
    """A client of `gw`, holding the admin token."""
    with gw.client() as client:
        yield client


@pytest.fixture
def opened() -> Iterator[contextlib.ExitStack]:
    """Closes each client a test opens (an unclosed one is a ResourceWarning, an error here)."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, one per module (Playwright is imported only by the tests that ask)."""
    from tests.browser import chromium

    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-server with the real model (tests/llama.py), one per module that asks."""
    with running(tmp_path_factory.mktemp("llama")) as server:
        yield server


@pytest.fixture
def dsn() -> Iterator[str]:
    """A new, empty PostgreSQL database of the test's own (tests/pg.py); dropped after."""
    with pg.database() as address:
        yield address


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test PostgreSQL server, to cut its connections."""
    pg.require()
    with TcpProxy("127.0.0.1", 5432) as through:
        yield through


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


@pytest.fixture
async def aclient(local: Local) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the in-process gateway (`local`), holding the admin token."""
    async with local.client() as client:
        yield client


# test_security.py's gateway: no keys, but a host name, an allowed origin, small sizes, limits.
GUARDED = (
    *("--allowed-hosts", "gateway.lan", "--cors-origins", "http://app.example"),
    *("--max-body", "4096", "--max-prompt", "500", "--project-rpm", "2"),
    *("--project-tokens-per-day", "40", "--max-streams", "2"),
)
# The keys of test_security.py's keyed gateway, by name: what each was made with.
KEYS = {
    "team": {"label": "team"},
    "qwen-only": {"label": "qwen only", "models": ["qwen"]},
    "slow": {"label": "slow", "limits": {"rpm": 1}},
    "one-stream": {"label": "one stream", "limits": {"streams": 1}},
    "revoked": {"label": "to revoke"},
}


def assert_no_secret_in(local: Local, log: str, secrets: list[str]) -> None:
    """No secret in any file of the data folder, nor in anything the gateway logged."""
    texts = [log] + [p.read_text(errors="replace") for p in local.data.rglob("*") if p.is_file()]
    for secret in secrets:
        for text in texts:
            assert secret not in text


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Local]:
    """The gateway in this process with GUARDED settings; no secret reaches its files or log."""
    with logged() as log:
        async with in_process(tmp_path / "data", *GUARDED) as local:
            yield local
            await local.gateway.store.flush()
    assert_no_secret_in(local, gateway_log(log.records), [local.admin_token])


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[Keyed]:
    """The gateway in this process with the KEYS made, so asking needs one; no key nor the
    admin token reaches its files or log."""
    with logged() as log:
        async with in_process(tmp_path / "data") as local, local.client() as admin:
            made: dict[str, dict[str, Any]] = {}
            for name, body in KEYS.items():
                response = await admin.post("/api/v1/admin/keys", json=body)
                assert response.status_code == 201, response.text
                made[name] = response.json()
            yield Keyed(local, made)
            await local.gateway.store.flush()
    secrets = [local.admin_token, *(key["key"] for key in made.values())]
    assert_no_secret_in(local, gateway_log(log.records), secrets)
