"""An Ollama server as an upstream: `calls.upstream.Upstream` over Ollama's native API.

Durations leave this module in seconds (Ollama sends nanoseconds), and failures leave it as
the gateway's neutral `calls.errors.UpstreamError`s, never as httpx exceptions. Every read is
bounded: a line by `max_line`, a whole body by `max_body`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx
import msgspec

from calls.collect import pieces_of, whole
from calls.errors import (
    ModelNotFound,
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamUnauthorized,
    UpstreamWrongAddress,
)
from calls.exchange import Server
from calls.types import (
    Answer,
    CallRequest,
    Embeddings,
    EmbedRequest,
    GpuUse,
    LoadedModel,
    Metrics,
    ModelInfo,
    Piece,
)
from calls.upstream import UpstreamHealth
from http_transport import Lines, LineTooLong, body_stream

from . import wire

_encode = msgspec.json.Encoder().encode
_decode_chat = msgspec.json.Decoder(wire.ChatChunk).decode
_decode_generate = msgspec.json.Decoder(wire.GenerateChunk).decode
_decode_chats = msgspec.json.Decoder(list[wire.ChatChunk]).decode
_decode_generates = msgspec.json.Decoder(list[wire.GenerateChunk]).decode
_decode_error = msgspec.json.Decoder(wire.ErrorReply).decode
_decode_tags = msgspec.json.Decoder(wire.RawTags).decode
_decode_version = msgspec.json.Decoder(wire.Version).decode
_decode_embed = msgspec.json.Decoder(wire.EmbedReply).decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
log = logging.getLogger("ollama_host.upstream")
T = TypeVar("T")

# /health must answer quickly even when Ollama hangs.
PROBE_SECONDS = 3.0
MAX_LINE = 4 << 20
MAX_BODY = 64 << 20


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9


def _metrics(chunk: wire.ChatChunk | wire.GenerateChunk) -> Metrics:
    return Metrics(
        done_reason=chunk.done_reason,
        input_tokens=chunk.prompt_eval_count,
        output_tokens=chunk.eval_count,
        upstream_seconds=_seconds(chunk.total_duration),
        load_seconds=_seconds(chunk.load_duration),
        prompt_eval_seconds=_seconds(chunk.prompt_eval_duration),
        eval_seconds=_seconds(chunk.eval_duration),
        context=chunk.context if isinstance(chunk, wire.GenerateChunk) else None,
    )


def _convert(entry: Any, kind: type[T]) -> T:
    return msgspec.convert(entry, kind)


def _details(details: wire.Details | None) -> dict[str, Any]:
    """A model's details as ModelInfo's fields; what Ollama leaves empty stays unknown."""
    if details is None:
        return {}
    return {
        "family": details.family or None,
        "families": details.families or None,
        "parameter_size": details.parameter_size or None,
        "quantization": details.quantization_level or None,
        "format": details.format or None,
    }


def _model(listed: wire.Listed, entry: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        name=listed.name or listed.model,
        **_details(listed.details),
        size=listed.size,
        digest=listed.digest or None,
        modified_at=listed.modified_at or None,
        remote_host=listed.remote_host or None,
        remote_model=listed.remote_model or None,
        raw=entry,
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _fields(info: ModelInfo) -> dict[str, Any]:
    return {f: getattr(info, f) for f in info.__struct_fields__}


def _status_error(status: int, body: bytes, model: str, address: str, path: str) -> UpstreamError:
    try:
        reply = _decode_error(body)
    except msgspec.DecodeError:
        reply = None
    text = body[:200].decode("utf-8", "replace").strip()
    message = (reply.error if reply else "") or text or f"HTTP {status}"
    if status == 404:
        # A missing model only where one was named and Ollama's JSON error speaks of it
        # (`model "x" not found, ...`). Anything else, gin's plain `404 page not found`
        # above all, is a path the server has no route for: the address is wrong. A list
        # names no model, so its 404 is always that, whatever the body says.
        if model and reply is not None and "model" in reply.error.lower():
            return ModelNotFound(message)
        return UpstreamWrongAddress(_wrong_address(address, path, message))
    if status in (401, 403):
        return UpstreamUnauthorized(_unauthorized(address, status, message, reply))
    if status == 503:
        return UpstreamBusy(message)
    if status == 400:
        return UpstreamRejected(message)
    return UpstreamFailed(f"Ollama answered {status}: {message}")


def _wrong_address(address: str, path: str, said: str) -> str:
    told = f"Ollama at {address} has no {path} (it answered 404 {said[:60]!r})"
    base = httpx.URL(address)
    if base.path.strip("/"):
        return (
            f"{told}: the address is probably wrong; give Ollama's root, without "
            f"{base.path!r} (e.g. {base.scheme}://{base.netloc.decode()})"
        )
    return (
        f"{told}: is it an Ollama server? An OpenAI-compatible server is an upstream of kind openai"
    )


def _unauthorized(address: str, status: int, message: str, reply: wire.ErrorReply | None) -> str:
    told = f"Ollama at {address} answered {status} {message}"
    if reply is not None and reply.signin_url:
        # The link would tie that server to whoever opens it, so it goes to the operator's
        # log, not to every caller.
        log.warning("Ollama at %s needs signing in to ollama.com: %s", address, reply.signin_url)
        return (
            f"{told}: the model runs on ollama.com and that Ollama server is not signed in; "
            "its administrator must run `ollama signin` there (the link is in the gateway's log)"
        )
    return f"{told}: the upstream refused the gateway; check the key configured for it"


def _piece_of(chunk: wire.ChatChunk | wire.GenerateChunk) -> Piece | None:
    """A chunk's piece of the answer; None if it carries none."""
    if isinstance(chunk, wire.GenerateChunk):
        if chunk.response or chunk.thinking:
            return Piece(chunk.response, chunk.thinking)
        return None
    message = chunk.message
    if message is None or not (message.content or message.thinking or message.tool_calls):
        return None
    return message


def _piece(
    line: bytes, completion: bool
) -> tuple[Piece | None, wire.ChatChunk | wire.GenerateChunk]:
    """One NDJSON line: its piece of the answer (None if it carries none), and the chunk."""
    chunk = _decode_generate(line) if completion else _decode_chat(line)
    return _piece_of(chunk), chunk


class OllamaStream:
    """An open streamed answer (`calls.upstream.AnswerStream`); `metrics` is set at the end.

    Closing it closes the upstream connection, which is how Ollama learns to stop
    generating an answer nobody will read.
    """

    def __init__(
        self, response: httpx.Response, server: Server, name: str, completion: bool, max_line: int
    ) -> None:
        self._response = response
        self._server = server
        self._completion = completion
        self._max_line = max_line
        self.upstream: str | None = name
        self.attempts = 1
        self.metrics: Metrics | None = None
        self.gpu: GpuUse | None = None

    async def batches(self) -> AsyncIterator[list[Piece]]:
        lines = Lines(self._max_line)
        line_of = self._line
        try:
            async for data in body_stream(self._response):
                found = lines.feed(data)
                if len(found) == 1:
                    # The common case: one read, one line, one token.
                    piece = line_of(found[0])
                    if piece is not None:
                        yield [piece]
                elif found:
                    pieces, failure = pieces_of(found, line_of)
                    if pieces:
                        yield pieces
                    if failure is not None:
                        raise failure
            if rest := lines.end():
                pieces, failure = pieces_of(rest, line_of)
                if pieces:
                    yield pieces
                if failure is not None:
                    raise failure
        except (LineTooLong, httpx.HTTPError) as exc:
            if (failure := self._server.broken(exc)) is None:
                raise
            raise failure from exc
        self.end()

    def end(self) -> Metrics:
        """The stream has ended: its final account, which it must have brought."""
        if self.metrics is None:
            raise UpstreamBadResponse("Ollama's stream ended without its final `done` line")
        return self.metrics

    def whole(self, body: bytes) -> Answer:
        """The answer a whole streamed body makes, read at once."""
        lines = [line for line in body.split(b"\n") if line.strip()]
        try:
            # Every line in one decode, as the JSON array they make: a decode per line was
            # most of what taking a short answer apart cost.
            chunks = (_decode_generates if self._completion else _decode_chats)(
                b"[" + b",".join(lines) + b"]"
            )
        except msgspec.DecodeError:
            # A line that is not a chunk: line by line, to fail on that line, as a stream does.
            pieces = [piece for line in lines if (piece := self._line(line)) is not None]
            return whole(pieces, self.end(), self.upstream)
        pieces = []
        for chunk in chunks:
            if chunk.error is not None:
                raise UpstreamFailed(chunk.error)
            if chunk.done:
                self.metrics = _metrics(chunk)
            piece = _piece_of(chunk)
            if piece is not None:
                pieces.append(piece)
        return whole(pieces, self.end(), self.upstream)

    def _line(self, line: bytes) -> Piece | None:
        if not line.strip():
            return None
        try:
            piece, chunk = _piece(line, self._completion)
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(
                f"Ollama sent a line that is not an answer chunk: {exc}"
            ) from exc
        if chunk.error is not None:
            raise UpstreamFailed(chunk.error)
        if chunk.done:
            self.metrics = _metrics(chunk)
        return piece

    async def aclose(self) -> None:
        await self._response.aclose()


class OllamaUpstream:
    """One Ollama server (`calls.upstream.Upstream`), over an httpx transport it owns.

    Requests are `httpx.Request`s handed straight to the transport, with the timeouts in
    their extensions as `httpx.AsyncClient` would put them. The client's own layers (auth,
    redirects, cookie extraction, event hooks) were a third of a whole ask's CPU in the
    gateway (docs/performance.md), and talking to Ollama needs none of them.
    """

    kind = "ollama"
    # Ollama reads `llama3` as `llama3:latest` itself: a model goes as the caller named it.
    exact_model_names = False

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        timeout: httpx.Timeout | None = None,
        *,
        name: str = "ollama",
        max_line: int = MAX_LINE,
        max_body: int = MAX_BODY,
        api_key: str | None = None,
        first_byte: float | None = None,
    ) -> None:
        self.name = name
        self.address = base_url.rstrip("/")
        self.max_line = max_line
        self.max_body = max_body
        # An Ollama behind a proxy may want a key, and so does ollama.com.
        self._server = Server(
            transport,
            self.address,
            timeout,
            who=f"Ollama at {self.address}",
            max_body=max_body,
            api_key=api_key,
            first_byte=first_byte,
            hint=" Set --ollama or OLLAMA_HOST to its address",
        )
        # Parsed once: a URL string would be parsed again on every request.
        self._chat_url = httpx.URL(self.address + "/api/chat")
        self._generate_url = httpx.URL(self.address + "/api/generate")

    async def aclose(self) -> None:
        await self._server.aclose()

    async def __aenter__(self) -> OllamaUpstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- HTTP --------------------------------------------------------------------------------

    def _request(self, method: str, url: httpx.URL, body: bytes | None = None) -> httpx.Request:
        return self._server.request(method, url, body)

    async def _call(
        self, method: str, path: str, body: bytes | None = None, model: str = ""
    ) -> bytes:
        request = self._request(method, httpx.URL(self.address + path), body)
        return await self._call_request(request, model)

    async def _call_request(self, request: httpx.Request, model: str) -> bytes:
        """The whole body of a 200 answer; any other status as its UpstreamError."""
        response = await self._server.send(request)
        data = await self._server.read(response)
        if response.status_code != 200:
            raise _status_error(response.status_code, data, model, self.address, request.url.path)
        return data

    # -- the Upstream interface --------------------------------------------------------------

    async def _listed(self, path: str) -> list[tuple[wire.Listed, dict[str, Any]]]:
        """Each model of /api/tags or /api/ps, typed and as the server wrote it."""
        body = await self._call("GET", path)
        try:
            entries = _decode_tags(body).models
            found = [(_convert(entry, wire.Listed), entry) for entry in entries]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamBadResponse(f"Ollama's {path} answer is not a model list: {exc}") from exc
        if not all(listed.name or listed.model for listed, _ in found):
            raise UpstreamBadResponse(f"Ollama's {path} answer lists a model without a name")
        return found

    async def models(self) -> list[ModelInfo]:
        return [_model(listed, entry) for listed, entry in await self._listed("/api/tags")]

    async def loaded(self) -> list[LoadedModel]:
        return [
            LoadedModel(
                **{**_fields(_model(listed, entry)), "loaded": True},
                memory=listed.size,
                vram=listed.size_vram,
                expires_at=listed.expires_at,
                loaded_context=listed.context_length,
            )
            for listed, entry in await self._listed("/api/ps")
        ]

    async def show(self, model: str) -> ModelInfo:
        body = await self._call("POST", "/api/show", _encode(wire.ShowRequest(model)), model)
        try:
            raw = _decode_object(body)
            shown = _convert(raw, wire.Shown)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamBadResponse(f"Ollama's /api/show answer is unreadable: {exc}") from exc
        info = shown.model_info or {}
        architecture = info.get("general.architecture")
        context = info.get(f"{architecture}.context_length") if architecture else None
        return ModelInfo(
            name=model,
            **_details(shown.details),
            modified_at=shown.modified_at,
            context_length=_count(context),
            parameter_count=_count(info.get("general.parameter_count")),
            capabilities=shown.capabilities,
            remote_host=shown.remote_host or None,
            remote_model=shown.remote_model or None,
            metadata=shown.model_info,
            template=shown.template,
            parameters=shown.parameters,
            modelfile=shown.modelfile,
            license=shown.license,
            raw=raw,
        )

    async def version(self) -> str:
        body = await self._call("GET", "/api/version")
        try:
            return _decode_version(body).version
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(f"Ollama's /api/version answer is unreadable: {exc}") from exc

    async def capacity(self) -> int | None:
        """Ollama does not say how many calls it runs at once (OLLAMA_NUM_PARALLEL is its
        own setting): the operator sets `cap` (docs/queue.md)."""
        return None

    async def health(self) -> list[UpstreamHealth]:
        state = UpstreamHealth(name=self.name, kind=self.kind, address=self.address, status="down")
        try:
            async with asyncio.timeout(PROBE_SECONDS):
                state.version = await self.version()
            state.status = "up"
        except UpstreamError as exc:
            state.error = exc.message
        except TimeoutError:
            state.error = f"Ollama at {self.address} did not answer within {PROBE_SECONDS:g} s"
        return [state]

    def _ask(self, request: CallRequest, stream: bool) -> httpx.Request:
        g = request.generation
        body: wire.ChatRequest | wire.GenerateRequest
        completion = request.completion
        if completion is None:
            body = wire.ChatRequest(
                model=request.model,
                messages=request.messages,
                stream=stream,
                format=g.format,
                options=g.options,
                keep_alive=g.keep_alive,
                think=g.think,
                tools=g.tools,
            )
            url = self._chat_url
        else:
            body = wire.GenerateRequest(
                model=request.model,
                prompt=completion.prompt,
                suffix=completion.suffix,
                system=completion.system,
                template=completion.template,
                context=completion.context,
                raw=completion.raw,
                images=completion.images,
                stream=stream,
                format=g.format,
                options=g.options,
                keep_alive=g.keep_alive,
                think=g.think,
            )
            url = self._generate_url
        # Fields Ollama takes that the gateway has no name for go along; its own fields win.
        data = _encode({**g.extra, **msgspec.to_builtins(body)}) if g.extra else _encode(body)
        return self._request("POST", url, data)

    async def answer(self, request: CallRequest) -> Answer:
        """A whole answer, asked for as a stream (calls/collect.py): asked with `stream: false`,
        Ollama sends nothing until the end, and the read timeout, meant as the wait for the
        next byte, would cap the whole answer. The stream is read whole, within max_body, and
        taken apart at once, which costs a fraction of relaying it piece by piece."""
        ask = self._ask(request, stream=True)
        response = await self._server.send(ask)
        body = await self._server.read(response)
        if response.status_code != 200:
            raise _status_error(
                response.status_code, body, request.model, self.address, ask.url.path
            )
        parser = OllamaStream(
            response, self._server, self.name, request.completion is not None, self.max_line
        )
        return parser.whole(body)

    async def open_stream(self, request: CallRequest) -> OllamaStream:
        """Start a streamed answer; returns once Ollama has accepted it (status 200).

        The caller must `aclose()` the returned stream.
        """
        ask = self._ask(request, stream=True)
        response = await self._server.send(ask)
        if response.status_code != 200:
            body = await self._server.read(response)
            raise _status_error(
                response.status_code, body, request.model, self.address, ask.url.path
            )
        return OllamaStream(
            response, self._server, self.name, request.completion is not None, self.max_line
        )

    async def embed(self, request: EmbedRequest) -> Embeddings:
        body = wire.EmbedRequest(
            model=request.model,
            input=request.input,
            truncate=request.truncate,
            dimensions=request.dimensions,
            options=request.options,
            keep_alive=request.keep_alive,
        )
        data = await self._call("POST", "/api/embed", _encode(body), request.model)
        try:
            reply = _decode_embed(data)
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(f"Ollama's /api/embed answer is unreadable: {exc}") from exc
        return Embeddings(
            vectors=reply.embeddings,
            input_tokens=reply.prompt_eval_count,
            upstream_seconds=_seconds(reply.total_duration),
            load_seconds=_seconds(reply.load_duration),
            upstream=self.name,
        )
