"""ollama_client/client.py: OllamaUpstream against an Ollama faked with httpx.MockTransport.

What goes out (Ollama's wire format), what comes back (seconds, not nanoseconds), and every
failure leaving as the gateway's own UpstreamError, never as an httpx exception. The same
client over the real transport and sockets is in test_http_transport_transport.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest

from calls.errors import (
    ModelNotFound,
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamWrongAddress,
)
from calls.types import CallRequest, Completion, EmbedRequest, Generation, Message, Piece
from http_transport.transport import MalformedResponse
from ollama_client import OllamaUpstream

pytestmark = pytest.mark.anyio

URL = "http://gpu-box:11434"
Handler = Callable[[httpx.Request], httpx.Response]

DONE = {
    "model": "llama3",
    "done": True,
    "done_reason": "stop",
    "total_duration": 2_500_000_000,
    "load_duration": 250_000_000,
    "prompt_eval_count": 7,
    "prompt_eval_duration": 500_000_000,
    "eval_count": 3,
    "eval_duration": 1_000_000_000,
}


def ollama(handler: Handler, **options: Any) -> OllamaUpstream:
    return OllamaUpstream(httpx.MockTransport(handler), URL, **options)


def hi(**generation: Any) -> CallRequest:
    return CallRequest(
        model="llama3",
        messages=[Message("system", "Be brief."), Message("user", "hi")],
        generation=Generation(**generation),
    )


def line(**fields: Any) -> bytes:
    return msgspec.json.encode(fields) + b"\n"


def chunk(content: str) -> bytes:
    return line(model="llama3", message={"role": "assistant", "content": content}, done=False)


def streaming(*parts: bytes | BaseException) -> Handler:
    """An answer streamed in these reads; an exception is raised when its turn comes."""

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            if isinstance(part, BaseException):
                raise part
            yield part

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    return handler


async def read_into(batches: list[list[Piece]], stream: AsyncIterator[list[Piece]]) -> None:
    async for batch in stream:
        batches.append(batch)


async def collect(upstream: OllamaUpstream) -> tuple[list[list[Piece]], Any]:
    stream = await upstream.open_stream(hi())
    batches: list[list[Piece]] = []
    try:
        async for batch in stream.batches():
            batches.append(batch)
    finally:
        await stream.aclose()
    return batches, stream.metrics


# -- what goes out ----------------------------------------------------------------------


async def test_a_chat_goes_out_in_ollamas_shape_with_its_settings() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**DONE, "message": {"role": "assistant", "content": "x"}})

    request = hi(options={"temperature": 0}, format="json", think=True, keep_alive="5m")
    await ollama(handler).answer(request)

    (sent,) = seen
    assert (sent.method, str(sent.url)) == ("POST", f"{URL}/api/chat")
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["host"] == "gpu-box:11434"
    assert msgspec.json.decode(sent.content) == {
        "model": "llama3",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        # Streamed even for a whole answer, so that --timeout is the wait for the next byte.
        "stream": True,
        "format": "json",
        "options": {"temperature": 0},
        "keep_alive": "5m",
        "think": True,
    }


async def test_fields_without_a_name_pass_through_but_never_override() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(msgspec.json.decode(request.content))
        return httpx.Response(200, json={**DONE, "message": {"role": "assistant", "content": ""}})

    await ollama(handler).answer(hi(extra={"truncate": False, "model": "evil", "stream": False}))

    assert seen[0]["truncate"] is False
    assert (seen[0]["model"], seen[0]["stream"]) == ("llama3", True)


async def test_a_completion_goes_to_generate() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**DONE, "response": "4", "context": [1, 2]})

    request = CallRequest(model="llama3", completion=Completion(prompt="2+2=", system="math"))
    answer = await ollama(handler).answer(request)

    assert str(seen[0].url) == f"{URL}/api/generate"
    assert msgspec.json.decode(seen[0].content) == {
        "model": "llama3",
        "prompt": "2+2=",
        "system": "math",
        "stream": True,
    }
    assert answer.content == "4"
    assert answer.metrics.context == [1, 2]


# -- what comes back ----------------------------------------------------------------------


async def test_a_whole_answer_comes_back_in_seconds() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        message = {"role": "assistant", "content": "hello", "thinking": "hm"}
        return httpx.Response(200, json={**DONE, "message": message})

    answer = await ollama(handler, name="box").answer(hi())

    assert (answer.content, answer.thinking, answer.upstream, answer.attempts) == (
        "hello",
        "hm",
        "box",
        1,
    )
    metrics = answer.metrics
    assert (metrics.input_tokens, metrics.output_tokens, metrics.done_reason) == (7, 3, "stop")
    assert (metrics.upstream_seconds, metrics.load_seconds) == (2.5, 0.25)
    assert (metrics.prompt_eval_seconds, metrics.eval_seconds) == (0.5, 1.0)


@pytest.mark.parametrize(
    "counts",
    [
        {"eval_count": 2**63, "prompt_eval_count": 2**64 + 5},  # past a 64-bit column
        {"eval_count": -3, "prompt_eval_count": 2**31},  # no call has these
    ],
)
async def test_counts_no_call_can_have_become_unknown(counts: dict[str, int]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**DONE, **counts, "message": {"content": "hi"}})

    answer = await ollama(handler).answer(hi())

    assert (answer.content, answer.metrics.input_tokens, answer.metrics.output_tokens) == (
        "hi",
        None,
        None,
    )
    assert answer.metrics.upstream_seconds == 2.5  # what was plausible is kept


async def test_durations_no_call_can_take_become_unknown() -> None:
    absurd = {"total_duration": 2**63 - 1, "eval_duration": -5, "load_duration": 10**30}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**DONE, **absurd, "message": {"content": "hi"}})

    answer = await ollama(handler).answer(hi())

    metrics = answer.metrics
    assert (metrics.upstream_seconds, metrics.eval_seconds, metrics.load_seconds) == (
        None,
        None,
        None,
    )
    assert (metrics.output_tokens, metrics.prompt_eval_seconds) == (3, 0.5)


async def test_an_absurd_embedding_count_becomes_unknown() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        reply = {"embeddings": [[0.5]], "prompt_eval_count": 2**70, "total_duration": -1}
        return httpx.Response(200, json=reply)

    result = await ollama(handler).embed(EmbedRequest(model="m", input=["a"]))

    assert (result.vectors, result.input_tokens, result.upstream_seconds) == ([[0.5]], None, None)


async def test_a_stream_comes_in_batches_however_the_lines_are_cut() -> None:
    wire = chunk("w0 ") + chunk("w1 ") + chunk("") + line(**DONE, message={"content": ""})
    cut = len(chunk("w0 ")) + 5
    upstream = ollama(streaming(wire[:cut], wire[cut:]))

    batches, metrics = await collect(upstream)

    contents = [[piece.content for piece in batch] for batch in batches]
    assert contents == [["w0 "], ["w1 "]]
    assert metrics.output_tokens == 3
    assert metrics.upstream_seconds == 2.5


async def test_an_error_line_mid_stream_fails_after_what_came_before() -> None:
    upstream = ollama(streaming(chunk("w0 ") + line(error="runner crashed")))
    stream = await upstream.open_stream(hi())
    batches: list[list[Piece]] = []

    with pytest.raises(UpstreamFailed) as raised:
        await read_into(batches, stream.batches())

    await stream.aclose()
    assert raised.value.message == "runner crashed"
    assert [[p.content for p in batch] for batch in batches] == [["w0 "]]


@pytest.mark.parametrize(
    ("parts", "failure", "words"),
    [
        ((chunk("w0 "),), UpstreamBadResponse, "without its final `done` line"),
        ((b"this is not json\n",), UpstreamBadResponse, "not an answer chunk"),
        ((b'{"message": 5}\n',), UpstreamBadResponse, "not an answer chunk"),
        ((chunk("w0 "), httpx.ReadTimeout("slow")), UpstreamTimeout, "mid-answer"),
        ((chunk("w0 "), httpx.RemoteProtocolError("cut")), UpstreamUnavailable, "broke mid-answer"),
        ((chunk("w0 "), MalformedResponse("bad chunk")), UpstreamBadResponse, "malformed HTTP"),
    ],
)
async def test_a_stream_that_goes_wrong_fails_with_the_gateways_own_error(
    parts: tuple[bytes | BaseException, ...], failure: type[UpstreamError], words: str
) -> None:
    with pytest.raises(failure) as raised:
        await collect(ollama(streaming(*parts)))

    assert words in raised.value.message


async def test_a_line_past_the_bound_is_a_bad_response_naming_the_setting() -> None:
    upstream = ollama(streaming(chunk("x" * 500)), max_line=100)

    with pytest.raises(UpstreamBadResponse) as raised:
        await collect(upstream)

    assert "longer than 100 bytes (--max-upstream-line)" in raised.value.message


async def test_a_whole_body_past_the_bound_is_a_bad_response_naming_the_setting() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 1000)

    with pytest.raises(UpstreamBadResponse) as raised:
        await ollama(handler, max_body=999).answer(hi())

    assert "larger than 999 bytes (--max-upstream-body)" in raised.value.message


# -- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "failure", "message"),
    [
        (404, b'{"error": "model \\"x\\" not found"}', ModelNotFound, 'model "x" not found'),
        (503, b'{"error": "server busy"}', UpstreamBusy, "server busy"),
        (400, b'{"error": "bad options"}', UpstreamRejected, "bad options"),
        (500, b'{"error": "oom"}', UpstreamFailed, "Ollama answered 500: oom"),
        (502, b"<html>proxy error</html>", UpstreamFailed, "Ollama answered 502: <html>"),
        (500, b"", UpstreamFailed, "Ollama answered 500: HTTP 500"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
async def test_each_status_is_its_upstream_error_with_ollamas_message(
    status: int, body: bytes, failure: type[UpstreamError], message: str, streamed: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    upstream = ollama(handler)
    with pytest.raises(failure) as raised:
        await (upstream.open_stream(hi()) if streamed else upstream.answer(hi()))

    assert raised.value.message.startswith(message)


@pytest.mark.parametrize(
    "body",
    [b"404 page not found", b'{"error": "404 page not found"}', b'{"error": "not found"}'],
    ids=["gin", "json", "json-short"],
)
@pytest.mark.parametrize("asked", ["models", "loaded", "version"])
async def test_a_404_for_a_list_is_a_wrong_address_whatever_its_body(
    body: bytes, asked: str
) -> None:
    # A list names no model, so its 404 can only be the server's "no such path": with
    # --ollama http://host:11434/v1 the model list said 404 model_not_found.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=body)

    upstream = OllamaUpstream(httpx.MockTransport(handler), URL + "/v1")
    with pytest.raises(UpstreamWrongAddress) as raised:
        await getattr(upstream, asked)()

    assert "the address is probably wrong" in raised.value.message
    assert f"(e.g. {URL})" in raised.value.message


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_404_for_an_ask_is_a_missing_model_only_if_it_says_model(streamed: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "404 page not found"})

    upstream = OllamaUpstream(httpx.MockTransport(handler), URL + "/v1")
    with pytest.raises(UpstreamWrongAddress, match="has no /v1/api/chat"):
        await (upstream.open_stream(hi()) if streamed else upstream.answer(hi()))


@pytest.mark.parametrize(
    ("exception", "failure", "words"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable, "cannot reach Ollama at " + URL),
        (httpx.ConnectTimeout("slow"), UpstreamUnavailable, "cannot reach Ollama at " + URL),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, "did not answer in time"),
        (httpx.RemoteProtocolError("closed early"), UpstreamUnavailable, "failed: closed early"),
        (MalformedResponse("not HTTP"), UpstreamBadResponse, "answered malformed HTTP: not HTTP"),
        (httpx.DecodingError("not gzip"), UpstreamBadResponse, "could not be decoded"),
    ],
)
async def test_transport_failures_leave_as_the_gateways_own_errors(
    exception: httpx.HTTPError, failure: type[UpstreamError], words: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    with pytest.raises(failure) as raised:
        await ollama(handler).answer(hi())

    assert words in raised.value.message
    assert raised.value.__cause__ is exception


async def test_an_answer_of_the_wrong_shape_is_a_bad_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[1, 2, 3])

    with pytest.raises(UpstreamBadResponse):
        await ollama(handler).answer(hi())


# -- models, health, embeddings ----------------------------------------------------------


async def test_models_are_ollamas_tags_with_their_details() -> None:
    tags = {"models": [{"name": "llama3:latest", "size": 1}, {"name": "qwen:7b"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("GET", "/api/tags")
        return httpx.Response(200, json=tags)

    models = await ollama(handler).models()

    assert [m.name for m in models] == ["llama3:latest", "qwen:7b"]
    assert models[0].raw == {"name": "llama3:latest", "size": 1}
    assert models[0].size == 1


@pytest.mark.parametrize("body", [b"[]", b'{"models": [{"size": 1}]}', b'{"models": 5}'])
async def test_a_tags_answer_that_is_no_model_list_is_a_bad_response(body: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    with pytest.raises(UpstreamBadResponse):
        await ollama(handler).models()


async def test_health_is_up_with_the_version_or_down_with_why() -> None:
    def up(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"version": "0.12.0"})

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    (healthy,) = await ollama(up, name="box").health()
    (broken,) = await ollama(down).health()

    assert (healthy.name, healthy.kind, healthy.address) == ("box", "ollama", URL)
    assert (healthy.status, healthy.version, healthy.error) == ("up", "0.12.0", None)
    assert (broken.status, broken.version) == ("down", None)
    assert broken.error is not None
    assert "cannot reach Ollama" in broken.error


async def test_embeddings_come_back_with_their_counts_in_seconds() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/embed"
        seen.append(msgspec.json.decode(request.content))
        reply = {"embeddings": [[0.5], [0.25]], "prompt_eval_count": 4, "total_duration": 10**9}
        return httpx.Response(200, json=reply)

    result = await ollama(handler).embed(EmbedRequest(model="m", input=["a", "b"], dimensions=1))

    assert seen == [{"model": "m", "input": ["a", "b"], "dimensions": 1}]
    assert (result.vectors, result.input_tokens, result.upstream_seconds) == (
        [[0.5], [0.25]],
        4,
        1.0,
    )


async def test_a_trailing_slash_in_the_address_is_dropped() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"version": "1"})

    upstream = OllamaUpstream(httpx.MockTransport(handler), URL + "/")
    await upstream.version()

    assert upstream.address == URL
    assert seen == [f"{URL}/api/version"]


async def test_loaded_models_are_ollamas_ps_typed() -> None:
    ps = {
        "models": [
            {
                "name": "llama3:latest",
                "model": "llama3:latest",
                "size": 6_000_000_000,
                "digest": "365c0bd3c000",
                "details": {"family": "llama", "parameter_size": "8.0B"},
                "expires_at": "2026-01-01T00:05:00Z",
                "size_vram": 5_000_000_000,
                "context_length": 4096,
            }
        ]
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("GET", "/api/ps")
        return httpx.Response(200, json=ps)

    (model,) = await ollama(handler).loaded()

    assert (model.name, model.loaded, model.family, model.parameter_size) == (
        "llama3:latest",
        True,
        "llama",
        "8.0B",
    )
    assert (model.memory, model.vram, model.loaded_context) == (6_000_000_000, 5_000_000_000, 4096)
    assert model.expires_at == "2026-01-01T00:05:00Z"
