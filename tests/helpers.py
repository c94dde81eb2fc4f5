"""Small helpers the API tests share."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec

from tests.gateway_proc import Gateway
from tests.sse import SSEEvent, SSEParser


def unique(prefix: str = "t") -> str:
    """A project tag no other test uses, so a test can find exactly its own records."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ask(agent: str = "llama3", content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"agent": agent, "content": content, **extra}


def records(client: httpx.Client, **params: str | int) -> list[dict[str, Any]]:
    response = client.get("/api/v1/admin/dashboard", params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def only_record(client: httpx.Client, project: str) -> dict[str, Any]:
    found = records(client, project=project)
    assert len(found) == 1, found
    return found[0]


async def arecords(client: httpx.AsyncClient, **params: str | int) -> list[dict[str, Any]]:
    """`records`, from an in-process gateway."""
    response = await client.get("/api/v1/admin/dashboard", params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


async def aonly_record(client: httpx.AsyncClient, project: str) -> dict[str, Any]:
    """`only_record`, from an in-process gateway: a call's record is written before its
    response is, so there is nothing to wait for."""
    found = await arecords(client, project=project)
    assert len(found) == 1, found
    return found[0]


def read_events(response: httpx.Response) -> tuple[list[SSEEvent], list[str]]:
    """Read a whole SSE response the way a browser does; returns events and comments."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    for text in response.iter_text():
        events.extend(parser.feed(text))
    return events, parser.comments


def data(event: SSEEvent) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(event.data)
    return decoded


ERROR_KEYS = {"status", "code", "message", "request_id"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error shape: {"error": {"status", "code", "message", "request_id"}}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["status"] == status
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    error: dict[str, Any] = body["error"]
    return error


def wait_record(client: httpx.Client, project: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one record of `project`, waiting for it: a cancelled call is recorded late."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(client, project=project)
        if found:
            assert len(found) == 1, found
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no record for project {project} within {timeout}s")
        time.sleep(0.02)


def calls_with(calls: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    """The stand-in's view of the calls whose last message contains `marker`."""
    # Some calls have no messages at all (Ollama's load/unload requests).
    return [c for c in calls if c["messages"] and marker in str(c["messages"][-1].get("content"))]


def read_until(response: httpx.Response, event: str) -> Iterator[str]:
    """Read a stream up to its first `event`; return the iterator, to be kept alive.

    Dropping a half-read httpx iterator closes the connection: a hang-up.
    """
    chunks = response.iter_text()
    parser = SSEParser()
    for text in chunks:
        if any(e.event == event for e in parser.feed(text)):
            return chunks
    raise AssertionError(f"the stream ended without a {event!r} event")


class Keys:
    """The API keys the tests ask with."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        # Accounts its calls to "team-a" when a call names no project.
        self.main = self.make(label="main", project="team-a")

    def make(self, **body: Any) -> str:
        with self.gateway.client() as admin:
            response = admin.post("/api/v1/admin/keys", json=body)
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key


def labels(project: str) -> dict[str, str]:
    return {"X-Project": project, "X-Process-Id": "proc-1", "X-Subprocess-Id": "sub-2"}


def wait_records(admin: httpx.Client, project: str, count: int) -> list[dict[str, Any]]:
    """The project's records, oldest first, once there are `count` (the store writes late)."""
    deadline = time.monotonic() + 15
    while True:
        found = records(admin, project=project)
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found[::-1]
        time.sleep(0.02)
