"""Correct against a real Ollama: what a reading of Ollama's Go source found the gateway got
wrong. Each test failed before its fix."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from calls.upstream import Upstream
from ollama_client import OllamaUpstream
from tests import ollama_standin
from tests.asgi import Local, in_process
from tests.gateway_proc import start_gateway
from tests.helpers import ask, assert_error, unique, wait_record
from tests.ollama_standin import SIGNIN_URL, StandIn
from tests.sse import SSEParser
from upstreams.config import UpstreamSpec
from upstreams.router import Member, Router

pytestmark = pytest.mark.anyio

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"


async def standin_calls(local: Local) -> list[dict[str, Any]]:
    assert local.standin is not None
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=local.standin), base_url="http://ollama.test"
    ) as ollama:
        calls: list[dict[str, Any]] = (await ollama.get("/_standin/calls")).json()
        return calls


def ollama_at(path: str) -> OllamaUpstream:
    """The in-process stand-in, asked at its root plus `path`."""
    app = ollama_standin.create_app()
    return OllamaUpstream(httpx.ASGITransport(app=app), "http://ollama.test:11434" + path)


@pytest.mark.server
def test_a_whole_answer_longer_than_the_timeout_succeeds_when_bytes_keep_coming(
    standin: StandIn, tmp_path: Path
) -> None:
    # --timeout is the wait for Ollama's next byte. Asked with `stream: false`, Ollama sends
    # nothing for the 2.4 s the answer takes, and a 1.5 s timeout gave 504.
    with (
        start_gateway(tmp_path / "data", "--ollama", standin.url, "--timeout", "1.5") as gateway,
        gateway.client() as client,
    ):
        response = client.post(SYNC, json=ask(content="slow [[tokens=6]] [[delay=0.4]]"))

    assert response.status_code == 200, response.text
    assert response.text == "w0 w1 w2 w3 w4 w5 "


@pytest.mark.server
def test_a_cancelled_stream_that_only_thought_is_charged(standin: StandIn, tmp_path: Path) -> None:
    # Ollama sends no counts for a stream cut short; the record then counts the chunks. A
    # model still thinking sends chunks with no content: they are output all the same, or
    # a per-day token limit could be dodged by hanging up while the model thinks.
    project = unique("think")
    flags = ["--ollama", standin.url, "--project-tokens-per-day", "3"]
    with start_gateway(tmp_path / "data", *flags) as gateway, gateway.client() as client:
        body = ask(content="[[thinking=3]] [[stall=0]]", project=project)
        with client.stream("POST", STREAM, json=body) as response:
            parser, tokens = SSEParser(), 0
            for text in response.iter_text():
                tokens += sum(e.event == "token" for e in parser.feed(text))
                if tokens == 3:
                    break  # and hang up, the model still thinking
        record = wait_record(client, project)
        again = client.post(SYNC, json=ask(project=project))

    assert record["status"] == "cancelled"
    assert record["thinking"] == "t0 t1 t2 "
    assert record["output"] == ""
    assert (record["output_tokens"], record["tokens_estimated"]) == (3, True)
    assert_error(again, 429, "rate_limited")


@pytest.mark.parametrize("routed", [False, True], ids=["alone", "routed"])
async def test_a_wrong_path_is_told_from_a_missing_model(tmp_path: Path, routed: bool) -> None:
    # gin answers a path it has no route for with a plain `404 page not found`; that is a
    # wrong address (here --ollama .../v1), not a missing model.
    upstream: Upstream = ollama_at("/v1")
    if routed:
        spec = UpstreamSpec(name="ollama", url="http://ollama.test:11434/v1")
        upstream = Router([Member(spec, ollama_at("/v1"), 5.0)])
    async with (
        in_process(tmp_path / "data", upstream=upstream) as app,
        app.client() as client,
    ):
        models = await client.get("/api/v1/ai/models")
        asked = await client.post(SYNC, json=ask())

    for response in (models, asked):
        error = assert_error(response, 502, "upstream_wrong_address")
        assert "/v1" in error["message"]
        assert "http://ollama.test:11434" in error["message"]


async def test_a_json_404_for_the_model_list_is_a_wrong_address(tmp_path: Path) -> None:
    # A server that answers every path it does not serve with a JSON error (a proxy in
    # front of Ollama, say): the model list names no model, so its 404 is no missing model.
    # It was 404 model_not_found "404 page not found" on every front's model list.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "404 page not found"})

    upstream = OllamaUpstream(httpx.MockTransport(handler), "http://ollama.test:11434/v1")
    async with (
        in_process(tmp_path / "data", upstream=upstream) as app,
        app.client() as client,
    ):
        replies = [await client.get(path) for path in ("/api/v1/ai/models", "/api/tags")]
        openai = await client.get("/v1/models")

    assert replies[0].json()["error"]["code"] == "upstream_wrong_address"
    assert openai.json()["error"]["code"] == "upstream_wrong_address"
    for response in (*replies, openai):
        assert response.status_code == 502, response.text
        assert "the address is probably wrong" in response.text
        assert "(e.g. http://ollama.test:11434)" in response.text


async def test_a_missing_model_is_still_model_not_found(local: Local) -> None:
    async with local.client() as client:
        response = await client.post(SYNC, json=ask("no-such-model"))

    assert_error(response, 404, "model_not_found")


async def test_an_upstream_401_with_a_signin_url_says_what_the_upstream_said(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    # What Ollama answers for a cloud model while it is not signed in to ollama.com. The
    # link would tie that server to whoever opens it: the operator's log gets it.
    with caplog.at_level(logging.WARNING, logger="ollama_host.upstream"):
        async with local.client() as client:
            response = await client.post(SYNC, json=ask(content="[[status=401]]"))

    error = assert_error(response, 502, "upstream_unauthorized")
    assert "401 unauthorized" in error["message"]
    assert "ollama signin" in error["message"]
    assert SIGNIN_URL not in response.text
    assert SIGNIN_URL in caplog.text


async def test_the_seed_body_passes_generation_fields_through(local: Local) -> None:
    fields: dict[str, Any] = {
        "options": {"temperature": 0.1, "num_predict": 2},
        "think": "low",
        "keep_alive": "10m",
        "format": {"type": "object"},
    }
    async with local.client() as client:
        response = await client.post(SYNC, json=ask(content="[[tokens=5]]", **fields))
    seen = (await standin_calls(local))[-1]

    assert response.status_code == 200
    assert {name: seen["body"][name] for name in fields} == fields


async def test_a_seed_body_without_them_sends_none(local: Local) -> None:
    async with local.client() as client:
        await client.post(SYNC, json=ask())
    seen = (await standin_calls(local))[-1]

    assert not {"options", "think", "keep_alive", "format"} & set(seen["body"])
