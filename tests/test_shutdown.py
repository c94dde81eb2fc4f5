"""SIGTERM and Ctrl-C with calls in flight, against a real gateway process."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import start_gateway
from tests.helpers import ask, data, records, unique
from tests.ollama_standin import StandIn
from tests.sse import SSEEvent, SSEParser

pytestmark = pytest.mark.server


class Stream(threading.Thread):
    """Reads one POST ask_async to its end in the background; `started`: its first event."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.body = body
        self.started = threading.Event()
        self.events: list[SSEEvent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        parser = SSEParser()
        try:
            with (
                httpx.Client(base_url=self.url, timeout=30) as client,
                client.stream("POST", "/api/v1/ai/ask_async", json=self.body) as response,
            ):
                assert response.status_code == 200
                for text in response.iter_text():
                    self.events.extend(parser.feed(text))
                    if self.events:
                        self.started.set()
        except (httpx.HTTPError, AssertionError) as exc:
            self.error = exc
        finally:
            self.started.set()


class Ask(threading.Thread):
    """One ask_sync in the background."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.body = body
        self.response: httpx.Response | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            self.response = client.post("/api/v1/ai/ask_sync", json=self.body)


def _wait_for(condition: Any, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _refuses_connections(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_sigterm_lets_calls_finish_or_tells_them_why_not(standin: StandIn, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    project = unique("shutdown")
    gateway = start_gateway(folder, "--ollama", standin.url, "--grace", "4")
    with gateway:
        # One answer that ends within the grace period, two that never would.
        finishing = Stream(
            gateway.url, ask(content="[[tokens=10]] [[delay=0.15]]", project=project)
        )
        stalled = Stream(gateway.url, ask(content="[[stall=1]]", project=project))
        marker = unique("sync")
        waiting = Ask(gateway.url, ask(content=f"{marker} [[stall=1]]", project=project))
        for worker in (finishing, stalled, waiting):
            worker.start()
        assert finishing.started.wait(10)
        assert stalled.started.wait(10)
        _wait_for(
            lambda: any(marker in str(call["messages"]) for call in standin.calls()),
            "the ask_sync to reach Ollama",
        )

        gateway.signal(signal.SIGTERM)

        # The listener closes at once, while the calls above are still running.
        _wait_for(lambda: _refuses_connections(gateway.url), "new connections to be refused")
        assert stalled.is_alive()
        code = gateway.wait(20)
        for worker in (finishing, stalled, waiting):
            worker.join(10)

    assert code == 0, gateway.logs()
    assert "Traceback" not in gateway.logs()
    assert finishing.error is None
    assert stalled.error is None

    assert finishing.events[-1].event == "done"
    assert data(finishing.events[-1])["status"] == "ok"

    last = stalled.events[-1]
    assert [e.event for e in stalled.events if e.event != "loading"] == ["start", "token", "error"]
    stalled_id = data(stalled.events[0])["id"]
    assert data(last) == {
        "error": {
            "status": 503,
            "code": "server_shutdown",
            "message": data(last)["error"]["message"],
            "request_id": stalled_id,
        }
    }

    assert waiting.response is not None
    assert waiting.response.status_code == 503
    assert waiting.response.json()["error"]["code"] == "server_shutdown"
    sync_id = waiting.response.headers["x-request-id"]

    # The records were written before the process exited: read them back after a restart.
    with (
        start_gateway(folder, "--ollama", standin.url) as again,
        again.client() as client,
    ):
        found = {r["id"]: r for r in records(client, project=project)}
    assert len(found) == 3
    assert found[data(finishing.events[0])["id"]]["status"] == "ok"
    for call_id in (stalled_id, sync_id):
        assert found[call_id]["status"] == "cancelled"
        assert found[call_id]["error_code"] == "server_shutdown"
    assert found[stalled_id]["output"] == "w0 "


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_idle_gateway_stops_at_once_with_status_0(
    standin: StandIn, tmp_path: Path, signum: int
) -> None:
    gateway = start_gateway(tmp_path / "data", "--ollama", standin.url)
    with gateway:
        gateway.signal(signum)
        code = gateway.wait(10)

    assert code == 0, gateway.logs()
    assert "Traceback" not in gateway.logs()


def test_grace_0_ends_streams_at_once(standin: StandIn, tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "data", "--ollama", standin.url, "--grace", "0")
    with gateway:
        stalled = Stream(gateway.url, ask(content="[[stall=2]]"))
        stalled.start()
        assert stalled.started.wait(10)
        _wait_for(lambda: len(stalled.events) >= 3, "the two tokens before the stall")

        gateway.signal(signal.SIGTERM)
        code = gateway.wait(10)
        stalled.join(10)

    assert code == 0
    assert [e.event for e in stalled.events if e.event != "loading"] == [
        "start",
        "token",
        "token",
        "error",
    ]
    assert data(stalled.events[-1])["error"]["code"] == "server_shutdown"
