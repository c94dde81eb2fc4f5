"""The fair queue seen from the API: a key's class and weight, X-Priority, the queue's headers
and SSE events, its records, and GET /api/v1/admin/queue; in this process, in front of a
scripted upstream at its cap (tests/test_upstreams_router.py's Fake)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.asgi import Local, in_process
from tests.helpers import aonly_record, assert_error
from tests.sse import parse_sse
from upstreams.router import Router

from .test_upstreams_router import Fake, eventually, router

pytestmark = pytest.mark.anyio

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"
QUEUE = "/api/v1/admin/queue"


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[tuple[Local, Fake, Router]]:
    """The gateway before one upstream with cap=1, whose calls wait for `fake.hold`."""
    fake = Fake("gpu", ["llama3"], loaded=["llama3"])
    fake.hold = asyncio.Event()
    routed = router(fake, caps={"gpu": 1})
    async with in_process(tmp_path / "data", "--open-wait", "0.05", upstream=routed) as local:
        yield local, fake, routed
        await local.gateway.store.flush()


async def make_key(admin: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await admin.post("/api/v1/admin/keys", json={"label": "k", **body})
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


def seed_ask(project: str, content: str = "hi") -> dict[str, Any]:
    return {"agent": "llama3", "content": content, "project": project}


async def waiting(routed: Router, n: int) -> None:
    async def there() -> bool:
        return len(routed.line.waiting) == n

    await eventually(there)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("weight", -1),
        ("weight", 0),
        ("weight", 1e9),
        ("weight", "2"),
        ("weight", None),
        ("priority", "urgent"),
        ("priority", 1),
    ],
)
async def test_a_bad_weight_or_class_is_422(
    aclient: httpx.AsyncClient, field: str, value: object
) -> None:
    made = await aclient.post("/api/v1/admin/keys", json={"label": "k", field: value})
    assert_error(made, 422, "invalid_request")
    key = await make_key(aclient)
    changed = await aclient.patch(f"/api/v1/admin/keys/{key['info']['id']}", json={field: value})
    if value is None:
        # null in an update means "unchanged"
        assert changed.status_code == 200
    else:
        assert_error(changed, 422, "invalid_request")


async def test_a_keys_class_and_weight_are_part_of_the_key(aclient: httpx.AsyncClient) -> None:
    made = await make_key(aclient, priority="batch", weight=2.5)
    assert (made["info"]["priority"], made["info"]["weight"]) == ("batch", 2.5)

    changed = await aclient.patch(
        f"/api/v1/admin/keys/{made['info']['id']}", json={"priority": "interactive"}
    )

    assert (changed.json()["priority"], changed.json()["weight"]) == ("interactive", 2.5)
    listed = (await aclient.get("/api/v1/admin/keys")).json()
    assert [(k["priority"], k["weight"]) for k in listed] == [("interactive", 2.5)]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (SYNC, {"agent": "llama3", "content": "hi"}),
        (STREAM, {"agent": "llama3", "content": "hi"}),
        ("/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}),
        (
            "/v1/chat/completions",
            {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
        ),
    ],
)
async def test_an_unknown_x_priority_is_400(
    aclient: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    response = await aclient.post(path, json=body, headers={"X-Priority": "urgent"})

    assert response.status_code == 400, response.text
    assert "X-Priority must be interactive or batch" in response.text
    if path != "/api/chat":  # Ollama's error shape has a message only
        assert "invalid_priority" in response.text


async def test_a_batch_key_asking_for_interactive_is_served_as_batch_and_told(
    aclient: httpx.AsyncClient,
) -> None:
    key = await make_key(aclient, priority="batch")
    headers = {"Authorization": f"Bearer {key['key']}", "X-Priority": "interactive"}

    response = await aclient.post(SYNC, json=seed_ask("raise"), headers=headers)

    assert response.status_code == 200, response.text
    assert response.headers["x-priority"] == "batch"
    record = await aonly_record(aclient, "raise")
    assert record["priority"] == "batch"


async def test_x_priority_batch_lowers_an_interactive_key(aclient: httpx.AsyncClient) -> None:
    response = await aclient.post(SYNC, json=seed_ask("lower"), headers={"X-Priority": "batch"})

    assert response.headers["x-priority"] == "batch"
    assert (await aonly_record(aclient, "lower"))["priority"] == "batch"


async def test_a_call_at_a_full_upstream_waits_and_its_wait_is_recorded(
    capped: tuple[Local, Fake, Router],
) -> None:
    local, fake, routed = capped
    async with local.client() as client:
        first = asyncio.ensure_future(client.post(SYNC, json=seed_ask("first")))
        await eventually(lambda: _running(routed))
        second = asyncio.ensure_future(client.post(SYNC, json=seed_ask("second")))
        await waiting(routed, 1)

        view = (await client.get(QUEUE)).json()

        [line] = view["queues"]
        assert (line["upstream"], line["model"], line["cap"]) == ("gpu", "llama3", 1)
        running = [(c["project"], c["priority"]) for c in line["running"]]
        assert running == [("first", "interactive")]
        assert [(c["project"], c["position"]) for c in line["waiting"]] == [("second", 1)]
        assert line["waiting"][0]["key_label"] == "admin"
        await asyncio.sleep(0.05)  # a wait long enough to see in the record
        assert fake.hold is not None
        fake.hold.set()
        answers = await asyncio.gather(first, second)

        assert [a.status_code for a in answers] == [200, 200]
        assert (await aonly_record(client, "first"))["queue_seconds"] == 0
        assert _queue_ms(answers[0].headers["server-timing"]) == 0
        record = await aonly_record(client, "second")
        assert record["queue_seconds"] >= 0.05
        duration = _queue_ms(answers[1].headers["server-timing"])
        assert duration >= 50
        assert (await client.get(QUEUE)).json()["queues"] == []


async def test_a_stream_in_line_hears_its_place_and_its_header_says_it(
    capped: tuple[Local, Fake, Router],
) -> None:
    local, fake, routed = capped
    async with local.client() as client:
        first = asyncio.ensure_future(client.post(SYNC, json=seed_ask("first")))
        await eventually(lambda: _running(routed))
        second = asyncio.ensure_future(client.post(SYNC, json=seed_ask("second")))
        await waiting(routed, 1)
        stream = asyncio.ensure_future(client.post(STREAM, json=seed_ask("stream")))
        await waiting(routed, 2)
        await asyncio.sleep(0.6)  # past --open-wait, and one look at its place
        assert fake.hold is not None
        fake.hold.set()
        response = await stream
        await asyncio.gather(first, second)

    assert response.status_code == 200
    assert response.headers["x-queue-position"] == "2"
    events = parse_sse(response.text)
    kinds = [e.event for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "done"
    queued = [e.data for e in events if e.event == "queued"]
    assert queued[0] == '{"position":2,"ahead":1}'
    assert "token" in kinds
    assert kinds.index("queued") < kinds.index("token")
    assert [int(e.id) for e in events] == list(range(len(events)))


async def test_a_stream_to_an_upstream_without_the_model_loaded_hears_loading(
    tmp_path: Path,
) -> None:
    cold = Fake("cold", ["llama3"], loaded=[])
    async with (
        in_process(tmp_path / "data", upstream=router(cold)) as local,
        local.client() as client,
    ):
        response = await client.post(STREAM, json=seed_ask("cold"))
        await local.gateway.store.flush()

    events = parse_sse(response.text)
    loading = [e.data for e in events if e.event == "loading"]
    assert loading == ['{"upstream":"cold","model":"llama3"}']


async def test_the_queue_is_admin_only(guarded: Local) -> None:
    async with guarded.client(admin=False) as client:
        response = await client.get(QUEUE)

    assert response.status_code == 401


async def _running(routed: Router) -> bool:
    return (await routed.health())[0].in_flight == 1


async def test_ollama_and_openai_fronts_tell_the_queue_in_headers_only(
    capped: tuple[Local, Fake, Router],
) -> None:
    local, fake, routed = capped
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    async with local.client() as client:
        first = asyncio.ensure_future(client.post(SYNC, json=seed_ask("first")))
        await eventually(lambda: _running(routed))
        ollama = asyncio.ensure_future(client.post("/api/chat", json={**chat, "stream": True}))
        await waiting(routed, 1)
        openai = asyncio.ensure_future(client.post("/v1/chat/completions", json=chat))
        await waiting(routed, 2)
        await asyncio.sleep(0.3)  # past --open-wait: the Ollama stream's response has begun
        assert fake.hold is not None
        fake.hold.set()
        streamed, whole, _ = await asyncio.gather(ollama, openai, first)

    assert streamed.headers["x-queue-position"] == "1"
    # NDJSON lines only, as Ollama's clients expect: no queue event in the body.
    lines = [line for line in streamed.text.splitlines() if line]
    assert all(line.startswith('{"model":"llama3"') for line in lines)
    assert whole.status_code == 200
    assert _queue_ms(whole.headers["server-timing"]) > 0
    assert "x-queue-position" not in whole.headers


def _queue_ms(header: str) -> float:
    """The queue's part of a Server-Timing header, in milliseconds."""
    found = re.search(r"\bqueue;dur=([0-9.]+)", header)
    assert found is not None, header
    return float(found.group(1))
