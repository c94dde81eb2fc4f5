"""The Ollama client: the gateway's only caller of httpx.

Durations leave this module in seconds (Ollama sends nanoseconds), and failures
leave it as `ollama_client.errors`, never as httpx exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
_JSON = {"content-type": "application/json"}


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
        buffer = b""
        try:
            async for data in self._response.aiter_bytes():
                buffer += data
                if b"\n" not in buffer:
                    continue
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    piece = self._line(line)
                    if piece is not None:
                        yield piece
            if buffer.strip():
                piece = self._line(buffer)
                if piece is not None:
                    yield piece
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
    """Talks to one Ollama server through an `httpx.AsyncClient` owned by the caller."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self._http = http
        self.address = base_url.rstrip("/")
        # Parsed once: httpx parses a URL string again on every request.
        self._chat_url = httpx.URL(self.address + "/api/chat")

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (httpx.ConnectTimeout, httpx.ConnectError) as exc:
            raise OllamaUnavailable(
                f"cannot reach Ollama at {self.address} ({exc or type(exc).__name__}); "
                "is it running? Set --ollama or OLLAMA_HOST to its address"
            ) from exc
        except httpx.TimeoutException as exc:
            raise OllamaTimeout(f"Ollama at {self.address} did not answer in time") from exc
        except httpx.TransportError as exc:
            raise OllamaUnavailable(
                f"the connection to Ollama at {self.address} failed: {exc}"
            ) from exc
        except httpx.DecodingError as exc:
            # A body its Content-Encoding does not describe (say, gzip that is not gzip).
            raise OllamaBadResponse(f"Ollama's answer could not be decoded: {exc}") from exc

    async def _get(self, path: str) -> bytes:
        async with self._errors():
            response = await self._http.get(self.address + path)
        if response.status_code != 200:
            raise _status_error(response.status_code, response.content, "")
        return response.content

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
        return self._http.build_request("POST", self._chat_url, content=body, headers=_JSON)

    async def chat(self, model: str, messages: list[Message]) -> Answer:
        """Ask for a whole answer at once (`stream: false`)."""
        async with self._errors():
            response = await self._http.send(self._chat_request(model, messages, stream=False))
        if response.status_code != 200:
            raise _status_error(response.status_code, response.content, model)
        try:
            chunk = _decode_chunk(response.content)
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
        async with self._errors():
            response = await self._http.send(
                self._chat_request(model, messages, stream=True), stream=True
            )
        if response.status_code != 200:
            try:
                async with self._errors():
                    body = await response.aread()
            finally:
                await response.aclose()
            raise _status_error(response.status_code, body, model)
        return ChatStream(response, self.address)
