"""A client that hangs up: Ollama's connection closes and the call is recorded as cancelled."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import msgspec
import pytest

from tests.gateway_proc import Gateway
from tests.helpers import ask, calls_with, records, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server


def eventually_cancelled(client: httpx.Client, project: str) -> list[dict[str, Any]]:
    """The project's records once one exists (the store writes in the background)."""
    deadline = time.monotonic() + 10
    while not (found := records(client, project=project)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def post_and_leave(
    gateway: Gateway, path: str, body: dict[str, Any], wait_for: bytes, project: str = ""
) -> None:
    """POST, read until `wait_for` (or send and read nothing if empty), then close the socket."""
    payload = msgspec.json.encode(body)
    label = b"X-Project: %s\r\n" % project.encode() if project else b""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"%sContent-Length: %d\r\n\r\n%s" % (path.encode(), label, len(payload), payload)
        )
        seen = b""
        while wait_for and wait_for not in seen:
            chunk = sock.recv(65536)
            assert chunk, seen
            seen += chunk


def test_sync_ask_left_by_its_client_closes_upstream_and_is_cancelled(
    gateway: Gateway, standin: StandIn, client: httpx.Client
) -> None:
    project = unique("leave-sync")
    # [[stall=0]]: the stand-in never answers a whole-answer chat until its client hangs up.
    post_and_leave(
        gateway, "/api/v1/ai/ask_sync", ask(content=f"{project} [[stall=0]]", project=project), b""
    )
    standin.wait_for(lambda calls: bool(calls_with(calls, project)))

    calls = standin.wait_for(
        lambda calls: all(c["disconnected"] for c in calls_with(calls, project))
    )
    found = eventually_cancelled(client, project)

    assert len([c for c in calls if project in str(c["messages"])]) == 1
    assert [r["status"] for r in found] == ["cancelled"]


def test_stream_left_mid_answer_closes_upstream_and_is_cancelled(
    gateway: Gateway, standin: StandIn, client: httpx.Client
) -> None:
    project = unique("leave-stream")
    body = ask(content=f"{project} [[tokens=1000]] [[delay=0.02]]", project=project)
    post_and_leave(gateway, "/api/v1/ai/ask_async", body, b"event: token")

    calls = standin.wait_for(
        lambda calls: all(c["disconnected"] for c in calls_with(calls, project))
    )
    found = eventually_cancelled(client, project)

    [call] = [c for c in calls if project in str(c["messages"])]
    assert not call["finished"]
    assert call["tokens_sent"] < 1000
    assert [r["status"] for r in found] == ["cancelled"]
    assert found[0]["output"].startswith("w0 ")


def _whole(path: str, content: str) -> dict[str, Any]:
    """A whole-answer ask of `content` on another front's `path`."""
    if path == "/api/generate":
        return {"model": "llama3", "prompt": content, "stream": False}
    if path == "/v1/completions":
        return {"model": "llama3", "prompt": content}
    messages = [{"role": "user", "content": content}]
    if path == "/api/chat":
        return {"model": "llama3", "messages": messages, "stream": False}
    return {"model": "llama3", "messages": messages}


@pytest.mark.parametrize(
    "path", ["/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"]
)
def test_whole_answer_on_other_fronts_left_by_its_client_is_cancelled(
    gateway: Gateway, standin: StandIn, client: httpx.Client, path: str
) -> None:
    project = unique("leave-front")
    post_and_leave(gateway, path, _whole(path, f"{project} [[stall=0]]"), b"", project=project)
    standin.wait_for(lambda calls: bool(calls_with(calls, project)))

    standin.wait_for(lambda calls: all(c["disconnected"] for c in calls_with(calls, project)))
    found = eventually_cancelled(client, project)

    assert [(r["status"], r["endpoint"]) for r in found] == [("cancelled", path)]
