"""The Ollama client: the gateway's only caller of httpx.

Durations leave this module in seconds (Ollama sends nanoseconds), and failures
leave it as `ollama_client.errors`, never as httpx exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec

from .errors import (
    ModelNotFound,
    OllamaBadResponse,
    OllamaBusy,
    OllamaError,
    OllamaFailed,
    OllamaRejected,
    OllamaTimeout,
    OllamaUnavailable,
)
from .wire import ChatChunk, ChatRequest, ErrorReply, Message, Tags, Version

_encode = msgspec.json.Encoder().encode
_decode_chunk = msgspec.json.Decoder(ChatChunk).decode
_decode_error = msgspec.json.Decoder(ErrorReply).decode
_decode_tags = msgspec.json.Decoder(Tags).decode
_decode_version = msgspec.json.Decoder(Version).decode
_ACCEPT = [(b"Accept", b"application/json"), (b"User-Agent", b"ollama-host")]
_JSON = [*_ACCEPT, (b"Content-Type", b"application/json")]


class Metrics(msgspec.Struct, kw_only=True):
    """Ollama's own account of one answer, durations in seconds; None when it sent none."""

    done_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    upstream_seconds: float | None = None
    load_seconds: float | None = None
    prompt_eval_seconds: float | None = None
    eval_seconds: float | None = None


class Piece(msgspec.Struct):
    """One streamed chunk of the answer."""

    content: str
    thinking: str | None = None


class Answer(msgspec.Struct):
    content: str
    metrics: Metrics
    thinking: str | None = None


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9


def _metrics(chunk: ChatChunk) -> Metrics:
    return Metrics(
        done_reason=chunk.done_reason,
        input_tokens=chunk.prompt_eval_count,
        output_tokens=chunk.eval_count,
        upstream_seconds=_seconds(chunk.total_duration),
        load_seconds=_seconds(chunk.load_duration),
        prompt_eval_seconds=_seconds(chunk.prompt_eval_duration),
        eval_seconds=_seconds(chunk.eval_duration),
    )


def _status_error(status: int, body: bytes, model: str) -> OllamaError:
    try:
        message = _decode_error(body).error
    except msgspec.DecodeError:
        message = ""
    message = message or body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    if status == 404:
        return ModelNotFound(message or f'model "{model}" not found')
    if status == 503:
        return OllamaBusy(message)
    if status == 400:
        return OllamaRejected(message)
    return OllamaFailed(f"Ollama answered {status}: {message}")


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response body as it arrives, its Content-Encoding undone."""
    stream = response.stream
    if "content-encoding" in response.headers or not isinstance(stream, httpx.AsyncByteStream):
        return response.aiter_bytes()
    # Nothing to undo: the transport's bytes as they are, without httpx's decoder and
    # chunker generators in between (two generator hops per streamed token).
    return aiter(stream)


class ChatStream:
    """An open streamed /api/chat answer. Iterate it for pieces; `metrics` is set at the end.

    Closing it closes the upstream connection, which is how Ollama learns to stop
    generating an answer nobody will read.
    """

    def __init__(self, response: httpx.Response, address: str) -> None:
        self._response = response
        self._address = address
        self.metrics: Metrics | None = None

    async def __aiter__(self) -> AsyncIterator[Piece]:
        async for batch in self.batches():
            for piece in batch:
                yield piece

    async def batches(self) -> AsyncIterator[list[Piece]]:
        """The pieces as they arrive, as a list per read: never empty, and one piece long
        unless several lines came in together."""
        buffer = b""
        try:
            async for data in _body(self._response):
                if not buffer and data.endswith(b"\n") and data.find(b"\n") == len(data) - 1:
                    # The common case: one read, one whole line (a token).
                    piece = self._line(data)
                    if piece is not None:
                        yield [piece]
                    continue
                buffer += data
                if b"\n" not in buffer:
                    continue
                *lines, buffer = buffer.split(b"\n")
                pieces: list[Piece] = []
                try:
                    for line in lines:
                        piece = self._line(line)
                        if piece is not None:
                            pieces.append(piece)
                except OllamaError:
                    if pieces:  # what came before the failure still counts
                        yield pieces
                    raise
                if pieces:
                    yield pieces
            if buffer.strip():
                piece = self._line(buffer)
                if piece is not None:
                    yield [piece]
        except httpx.TimeoutException as exc:
            raise OllamaTimeout(
                f"Ollama at {self._address} sent nothing for too long mid-answer"
            ) from exc
        except httpx.TransportError as exc:
            raise OllamaUnavailable(
                f"the connection to Ollama at {self._address} broke mid-answer: {exc}"
            ) from exc
        except httpx.DecodingError as exc:
            raise OllamaBadResponse(f"Ollama's answer could not be decoded: {exc}") from exc
        if self.metrics is None:
            raise OllamaBadResponse("Ollama's stream ended without its final `done` line")

    def _line(self, line: bytes) -> Piece | None:
        if not line.strip():
            return None
        try:
            chunk = _decode_chunk(line)
        except msgspec.DecodeError as exc:
            raise OllamaBadResponse(f"Ollama sent a line that is not a chat chunk: {exc}") from exc
        if chunk.error is not None:
            raise OllamaFailed(chunk.error)
        if chunk.done:
            self.metrics = _metrics(chunk)
        message = chunk.message
        if message is None or (not message.content and not message.thinking):
            return None
        return Piece(message.content, message.thinking)

    async def aclose(self) -> None:
        await self._response.aclose()


class OllamaClient:
    """Talks to one Ollama server over an httpx transport it owns (close it with `aclose`).

    Requests are `httpx.Request`s handed straight to the transport, with the timeouts in
    their extensions as `httpx.AsyncClient` would put them. The client's own layers (auth,
    redirects, cookie extraction, event hooks) were a third of a whole ask's CPU in the
    gateway (docs/performance.md), and talking to Ollama needs none of them.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self._transport = transport
        self.address = base_url.rstrip("/")
        self._timeout = (timeout or httpx.Timeout(300.0)).as_dict()
        # Parsed once: a URL string would be parsed again on every request.
        self._chat_url = httpx.URL(self.address + "/api/chat")

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> OllamaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _request(self, method: str, url: httpx.URL, body: bytes | None = None) -> httpx.Request:
        # `stream=` rather than `content=`: the headers are complete as given, so httpx
        # skips its header merging (a tenth of an ask's CPU, measured).
        if body is None:
            headers = [(b"Host", url.netloc), *_ACCEPT]
        else:
            headers = [(b"Host", url.netloc), (b"Content-Length", b"%d" % len(body)), *_JSON]
        return httpx.Request(
            method,
            url,
            headers=headers,
            stream=httpx.ByteStream(body or b""),
            extensions={"timeout": self._timeout},
        )

    def _failure(self, exc: httpx.HTTPError) -> OllamaError | None:
        """The OllamaError an httpx failure stands for; None for one that is not a failure
        of talking to Ollama (a bug here, which must surface as it is)."""
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return OllamaUnavailable(
                f"cannot reach Ollama at {self.address} ({exc or type(exc).__name__}); "
                "is it running? Set --ollama or OLLAMA_HOST to its address"
            )
        if isinstance(exc, httpx.TimeoutException):
            return OllamaTimeout(f"Ollama at {self.address} did not answer in time")
        if isinstance(exc, httpx.TransportError):
            return OllamaUnavailable(f"the connection to Ollama at {self.address} failed: {exc}")
        if isinstance(exc, httpx.DecodingError):
            # A body its Content-Encoding does not describe (say, gzip that is not gzip).
            return OllamaBadResponse(f"Ollama's answer could not be decoded: {exc}")
        return None

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The response, its body still unread (close it, or read it to the end)."""
        # try/except, not a context manager: this runs on every ask.
        try:
            return await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            if (failure := self._failure(exc)) is None:
                raise
            raise failure from exc

    async def _read(self, response: httpx.Response) -> bytes:
        """The whole body; the response is closed afterwards."""
        try:
            return b"".join([part async for part in _body(response)])
        except httpx.HTTPError as exc:
            if (failure := self._failure(exc)) is None:
                raise
            raise failure from exc
        finally:
            await response.aclose()

    async def _get(self, path: str) -> bytes:
        response = await self._send(self._request("GET", httpx.URL(self.address + path)))
        body = await self._read(response)
        if response.status_code != 200:
            raise _status_error(response.status_code, body, "")
        return body

    async def models(self) -> list[str]:
        body = await self._get("/api/tags")
        try:
            return [m.name for m in _decode_tags(body).models]
        except msgspec.DecodeError as exc:
            raise OllamaBadResponse(
                f"Ollama's /api/tags answer is not a model list: {exc}"
            ) from exc

    async def version(self) -> str:
        body = await self._get("/api/version")
        try:
            return _decode_version(body).version
        except msgspec.DecodeError as exc:
            raise OllamaBadResponse(f"Ollama's /api/version answer is unreadable: {exc}") from exc

    def _chat_request(self, model: str, messages: list[Message], stream: bool) -> httpx.Request:
        body = _encode(ChatRequest(model=model, messages=messages, stream=stream))
        return self._request("POST", self._chat_url, body)

    async def chat(self, model: str, messages: list[Message]) -> Answer:
        """Ask for a whole answer at once (`stream: false`)."""
        response = await self._send(self._chat_request(model, messages, stream=False))
        body = await self._read(response)
        if response.status_code != 200:
            raise _status_error(response.status_code, body, model)
        try:
            chunk = _decode_chunk(body)
        except msgspec.DecodeError as exc:
            raise OllamaBadResponse(
                f"Ollama's chat answer is not JSON of the chat shape: {exc}"
            ) from exc
        if chunk.error is not None:
            raise OllamaFailed(chunk.error)
        message = chunk.message
        if message is None:
            return Answer("", _metrics(chunk))
        return Answer(message.content, _metrics(chunk), message.thinking)

    async def open_chat(self, model: str, messages: list[Message]) -> ChatStream:
        """Start a streamed answer; returns once Ollama has accepted it (status 200).

        The caller must `aclose()` the returned stream.
        """
        response = await self._send(self._chat_request(model, messages, stream=True))
        if response.status_code != 200:
            body = await self._read(response)
            raise _status_error(response.status_code, body, model)
        return ChatStream(response, self.address)
