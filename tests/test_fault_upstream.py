"""The misbehaving Ollama (tests/fault_upstream.py) does what its model names say."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from tests.fault_upstream import FaultUpstream, parse_model, start_fault_upstream

# Every test but the first talks to the fault upstream's own server process.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    with start_fault_upstream() as server:
        yield server


@pytest.fixture
def ollama(upstream: FaultUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.url, timeout=10.0, trust_env=False) as client:
        yield client


def chat(model: str, *, stream: bool = True) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def lines(body: bytes) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in body.splitlines()]


def last(upstream: FaultUpstream, model: str) -> dict[str, Any]:
    return [s for s in upstream.stats() if s["model"] == model][-1]


@pytest.mark.parametrize(
    ("model", "parsed"),
    [
        ("flood-1024", ("flood", 1024)),
        ("flood-64k:latest", ("flood", 65536)),
        ("bigbody-50m", ("bigbody", 50 << 20)),
        ("stall-head", ("stall-head", 0)),
        ("garbage-http", ("garbage-http", 0)),
        ("tokens", None),
        ("stall-head-3", None),
        ("llama3", None),
    ],
)
def test_model_names_choose_the_fault(model: str, parsed: tuple[str, int] | None) -> None:
    assert parse_model(model) == parsed


def test_tokens_answer_like_ollama_streamed_and_whole(ollama: httpx.Client) -> None:
    streamed = ollama.post("/api/chat", json=chat("tokens-3"))
    whole = ollama.post("/api/chat", json=chat("tokens-3", stream=False))

    assert streamed.headers["content-type"] == "application/x-ndjson"
    chunks = lines(streamed.content)
    assert [c["message"]["content"] for c in chunks] == ["w0 ", "w1 ", "w2 ", ""]
    assert [c["done"] for c in chunks] == [False, False, False, True]
    assert chunks[-1]["eval_count"] == 3
    assert whole.json()["message"]["content"] == "w0 w1 w2 "
    assert whole.json()["done"] is True


def test_an_unknown_model_is_404_as_ollama_says_it(ollama: httpx.Client) -> None:
    response = ollama.post("/api/chat", json=chat("llama3"))

    assert response.status_code == 404
    assert response.json() == {"error": 'model "llama3" not found, try pulling it first'}


def test_sizes_are_exact(ollama: httpx.Client) -> None:
    body = ollama.post("/api/chat", json=chat("bigbody-200k", stream=False))
    token = ollama.post("/api/chat", json=chat("bigtoken-100000"))
    noline = ollama.post("/api/chat", json=chat("noline-300000"))

    assert len(body.content) == 200 * 1024
    assert msgspec.json.decode(body.content)["done"] is True
    first, done = lines(token.content)
    assert len(first["message"]["content"]) == 100_000
    assert done["done"] is True
    assert len(noline.content) == 300_000
    assert b"\n" not in noline.content


def test_a_flood_stops_when_its_client_leaves(
    upstream: FaultUpstream, ollama: httpx.Client
) -> None:
    head = b""
    with ollama.stream("POST", "/api/chat", json=chat("flood-20")) as response:
        read = 0
        for part in response.iter_bytes():
            head = head or part
            read += len(part)
            if read > 5_000_000:
                break
    # Leaving the block closed the connection; the server sees it and stops writing.
    found = upstream.wait_for(lambda stats: not last(upstream, "flood-20")["open"])

    flood = [s for s in found if s["model"] == "flood-20"][-1]
    assert flood["closed_at"] is not None
    assert flood["ended_at"] >= flood["closed_at"]
    assert flood["bytes_written"] >= read
    assert msgspec.json.decode(head.split(b"\n")[0])["message"]["content"] == "a" * 20


def test_a_stall_learns_that_its_client_left(upstream: FaultUpstream, ollama: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        ollama.post("/api/chat", json=chat("stall-head"), timeout=0.3)

    stalled = upstream.wait_for(lambda stats: last(upstream, "stall-head")["closed_at"] is not None)
    assert [s for s in stalled if s["model"] == "stall-head"][-1]["bytes_written"] == 0


@pytest.mark.parametrize("model", ["garbage-http", "badchunk"])
def test_malformed_http_is_a_protocol_error(ollama: httpx.Client, model: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        ollama.post("/api/chat", json=chat(model))


def test_die_mid_ends_the_process_and_restart_brings_it_back() -> None:
    with start_fault_upstream() as upstream:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(upstream.url + "/api/chat", json=chat("die-mid"), trust_env=False)
        assert upstream.process.wait(10) == 3

        upstream.restart()

        answer = httpx.post(upstream.url + "/api/chat", json=chat("tokens-1"), trust_env=False)
        assert answer.status_code == 200
