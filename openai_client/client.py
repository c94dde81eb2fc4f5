"""An OpenAI-compatible server as an upstream: `calls.upstream.Upstream` over
/v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models.

For llama.cpp's `llama-server`, vLLM, LM Studio, or Ollama's own /v1. Answers are always asked
for as streams (`stream_options.include_usage` brings the token counts in the last chunk), and
a whole answer is such a stream read to its end, so the read timeout is the wait for the next
byte.
llama-server's `timings` (prompt_ms, predicted_ms) become the metrics' prompt and generation
seconds. Failures leave as the gateway's neutral `calls.errors.UpstreamError`s; every read is
bounded, a line by `max_line`, a whole body by `max_body`.

What a model's "loaded" means here: /v1/models entries with a `status` (llama-server's router
mode, which loads and unloads models) are loaded when it says `loaded`; entries without one
(a llama-server or vLLM serving the one model it started with) are always loaded.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

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
    MODEL_PATTERN,
    Answer,
    CallRequest,
    Embeddings,
    EmbedRequest,
    Generation,
    GpuUse,
    LoadedModel,
    Message,
    Metrics,
    ModelInfo,
    Piece,
    ToolCall,
    ToolFunction,
)
from calls.upstream import UpstreamHealth
from http_transport import LineTooLong, body_stream, split_lines

from . import wire

_encode = msgspec.json.Encoder().encode
_decode_chunk = msgspec.json.Decoder(wire.Chunk).decode
_decode_error = msgspec.json.Decoder(wire.ErrorReply).decode
_decode_models = msgspec.json.Decoder(wire.ModelList).decode
_decode_embeddings = msgspec.json.Decoder(wire.EmbeddingReply).decode
_decode_props = msgspec.json.Decoder(wire.Props).decode
# More slots than this is not a server's report but a mistake: no cap is taken from it.
MAX_SLOTS = 4096
_decode_arguments = msgspec.json.Decoder(dict[str, Any]).decode

PROBE_SECONDS = 3.0
MAX_LINE = 4 << 20
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")
MAX_BODY = 64 << 20

# Ollama's option names that OpenAI-compatible servers take under the same name. OpenAI takes
# the first ones; llama-server and vLLM also top_k, min_p, typical_p and repeat_penalty. The
# rest (num_ctx, num_gpu, ...) configure an Ollama runner and have no equivalent here.
_SAME_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
    }
)
_IMAGE_TYPES = {
    "iVBOR": "image/png",
    "/9j/": "image/jpeg",
    "R0lGOD": "image/gif",
    "UklGR": "image/webp",
}


def _image_url(data: str) -> str:
    mime = next((t for prefix, t in _IMAGE_TYPES.items() if data.startswith(prefix)), "image/png")
    return f"data:{mime};base64,{data}"


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
        parts.extend(
            {"type": "image_url", "image_url": {"url": _image_url(image)}}
            for image in message.images
        )
        out["content"] = parts
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id or f"call_{n}",
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": _encode(call.function.arguments).decode(),
                },
            }
            for n, call in enumerate(message.tool_calls)
        ]
    if message.role == "tool":
        # OpenAI matches a tool's answer to its call by id; Ollama's clients send the name.
        out["tool_call_id"] = message.tool_call_id or message.tool_name or ""
    return out


def _generation(g: Generation) -> dict[str, Any]:
    """Ollama's generation fields in OpenAI's names; what has no equivalent is left out."""
    body: dict[str, Any] = {}
    for name, value in (g.options or {}).items():
        if name == "num_predict":
            # Ollama's -1 (no limit) and -2 (fill the context) are the server's default here.
            if isinstance(value, int) and value > 0:
                body["max_tokens"] = value
        elif name in _SAME_OPTIONS:
            body[name] = value
    if g.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(g.format, dict):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": g.format},
        }
    if isinstance(g.think, str):
        body["reasoning_effort"] = g.think
    elif g.think is not None:
        # llama-server and vLLM hand these to the model's chat template.
        body["chat_template_kwargs"] = {"enable_thinking": g.think}
    if g.tools:
        body["tools"] = g.tools
    return body


def _error_text(body: bytes) -> str:
    try:
        reply = _decode_error(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(reply.error, wire.ErrorInfo):
        return reply.error.message
    return reply.error or reply.message or body[:200].decode("utf-8", "replace").strip()


def _status_error(
    status: int, body: bytes, address: str, path: str, *, named: bool = True
) -> UpstreamError:
    """`named`: the request named a model (a list names none, so its 404 is a wrong path)."""
    message = _error_text(body) or f"HTTP {status}"
    told = f"the OpenAI-compatible server at {address} answered {status} {message}"
    if status == 404:
        if named and "model" in message.lower():
            return ModelNotFound(message)
        return UpstreamWrongAddress(
            f"the server at {address} has no {path} (it answered 404 {message[:60]!r}): give "
            "the server's root (with or without /v1); an Ollama server is an upstream of kind "
            "ollama"
        )
    if status in (401, 403):
        return UpstreamUnauthorized(f"{told}: check the key configured for this upstream")
    if status in (429, 503):
        return UpstreamBusy(message)
    if status in (400, 413, 422):
        return UpstreamRejected(message)
    return UpstreamFailed(told)


def human_number(n: int) -> str:
    """A parameter count as Ollama writes it (format.HumanNumber): 8.0B, 134.52M, 500K."""
    for unit, scale, digits in (("B", 10**9, 1), ("M", 10**6, 2), ("K", 10**3, 0)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.{digits}f}{unit}"
    return str(n)


_NO_META = wire.Meta()


def _meta(info: ModelInfo) -> wire.Meta:
    raw = (info.raw or {}).get("meta")
    return msgspec.convert(raw, wire.Meta) if isinstance(raw, dict) else _NO_META


def _model(entry: wire.ModelEntry, raw: dict[str, Any], said: list[str] | None) -> ModelInfo:
    """A /v1/models entry in the gateway's terms. OpenAI's own fields say only the id and
    when it was made; llama-server's `meta` adds the weights (their parameter count, size,
    quantization and trained context), vLLM's `max_model_len` the context; a model with a
    `status` (llama-server's router mode) is loaded when it says so, and one without is the
    one the server started with, always loaded. Capabilities: llama-server's own, else a
    model that answers chat and completions, seeing images if it takes them as input."""
    meta = entry.meta or _NO_META
    capabilities = said
    if capabilities is None:
        inputs = entry.architecture.input_modalities if entry.architecture else None
        capabilities = ["completion", *(["vision"] if "image" in (inputs or ()) else [])]
    return ModelInfo(
        name=exposed_name(entry.id),
        parameter_size=human_number(meta.n_params) if meta.n_params else None,
        parameter_count=meta.n_params,
        quantization=meta.ftype or None,
        format="gguf" if entry.meta is not None else None,
        size=meta.size,
        modified_at=(
            datetime.fromtimestamp(entry.created, UTC).isoformat().replace("+00:00", "Z")
            if entry.created
            else None
        ),
        context_length=meta.n_ctx_train or entry.max_model_len,
        capabilities=capabilities,
        loaded=entry.status is None or entry.status.value == "loaded",
        raw=raw,
    )


def exposed_name(model_id: str) -> str:
    """The name clients use for a model the server lists as `model_id`.

    Most servers list names a client can ask for. llama.cpp's llama-server started without
    `--alias` lists the model file's path (`/models/SmolLM2-135M-Instruct.Q4_1.gguf`), which no
    model name may be (`/x` and `../x` never reach an upstream): such a model is listed, and
    asked for, by its file name without `.gguf` (`SmolLM2-135M-Instruct.Q4_1`), and the
    server is sent its own id.
    """
    if re.fullmatch(MODEL_PATTERN, model_id):
        return model_id
    base = PureWindowsPath(PurePosixPath(model_id).name).name
    base = base.removesuffix(".gguf").removesuffix(".GGUF")
    return _NOT_NAME.sub("-", base).lstrip("._-")[:200] or "model"


class _ToolCalls:
    """Tool calls as they stream in fragments, by index, within a bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.calls: dict[int, tuple[list[str | None], list[str]]] = {}

    def add(self, deltas: list[wire.ToolCallDelta]) -> None:
        for delta in deltas:
            head, parts = self.calls.setdefault(delta.index, ([None, None], []))
            if delta.id:
                head[0] = delta.id
            function = delta.function
            if function is None:
                continue
            if function.name:
                head[1] = (head[1] or "") + function.name
            if function.arguments:
                self.size += len(function.arguments)
                if self.size > self.limit:
                    raise UpstreamBadResponse(
                        f"the tool calls' arguments pass {self.limit} bytes (--max-upstream-line)"
                    )
                parts.append(function.arguments)

    def take(self) -> list[ToolCall]:
        out = []
        for index in sorted(self.calls):
            (call_id, name), parts = self.calls[index]
            text = "".join(parts)
            try:
                arguments = _decode_arguments(text) if text.strip() else {}
            except msgspec.DecodeError as exc:
                raise UpstreamBadResponse(
                    f"a tool call's arguments are not a JSON object: {exc}"
                ) from exc
            out.append(ToolCall(ToolFunction(name or "", arguments, index), call_id))
        self.calls.clear()
        return out


class OpenAIStream:
    """An open streamed answer (`calls.upstream.AnswerStream`) in Server-Sent Events."""

    def __init__(
        self, response: httpx.Response, server: Server, name: str, completion: bool, max_line: int
    ) -> None:
        self._response = response
        self._server = server
        self._address = server.address
        self._completion = completion
        self._max_line = max_line
        self._tools = _ToolCalls(max_line)
        self._usage: wire.Usage | None = None
        self._timings: wire.Timings | None = None
        self._finish: str | None = None
        self._done = False
        self.upstream: str | None = name
        self.attempts = 1
        self.metrics: Metrics | None = None
        self.gpu: GpuUse | None = None

    async def batches(self) -> AsyncIterator[list[Piece]]:
        try:
            async for lines in split_lines(body_stream(self._response), self._max_line):
                pieces, failure = pieces_of(lines, self._line)
                if pieces:
                    yield pieces
                if failure is not None:
                    raise failure
        except (LineTooLong, httpx.HTTPError) as exc:
            if (failure := self._server.broken(exc)) is None:
                raise
            raise failure from exc
        last = self.end()
        if last is not None:
            yield [last]

    def end(self) -> Piece | None:
        """The stream has ended: set its metrics, and return the tool calls still held."""
        last = Piece(tool_calls=self._tools.take()) if self._tools.calls else None
        if not (self._done or self._finish):
            raise UpstreamBadResponse(
                f"the stream from {self._address} ended before the answer did (no "
                "finish_reason, no [DONE])"
            )
        usage, timings = self._usage, self._timings
        prompt = timings.prompt_ms / 1000 if timings and timings.prompt_ms is not None else None
        predicted = (
            timings.predicted_ms / 1000 if timings and timings.predicted_ms is not None else None
        )
        self.metrics = Metrics(
            done_reason=self._finish,
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            upstream_seconds=None if prompt is None or predicted is None else prompt + predicted,
            prompt_eval_seconds=prompt,
            eval_seconds=predicted,
        )
        return last

    def whole(self, body: bytes) -> Answer:
        """The answer a whole streamed body makes, read at once."""
        pieces = [piece for line in body.split(b"\n") if (piece := self._line(line)) is not None]
        if (last := self.end()) is not None:
            pieces.append(last)
        assert self.metrics is not None  # end() sets them
        return whole(pieces, self.metrics, self.upstream)

    def _line(self, line: bytes) -> Piece | None:
        # SSE: `data:` lines carry the chunks; comments (`:`), `event:` lines and the blank
        # lines between events carry nothing of the answer.
        if not line.startswith(b"data:"):
            return None
        data = line[5:].strip()
        if data == b"[DONE]":
            self._done = True
            return None
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(
                f"the server sent a line that is not an answer chunk: {exc}"
            ) from exc
        if chunk.error is not None:
            error = chunk.error
            raise UpstreamFailed(
                f"the server at {self._address} failed mid-answer: "
                + (error.message if isinstance(error, wire.ErrorInfo) else error)
            )
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.timings is not None:
            self._timings = chunk.timings
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        if choice.finish_reason:
            self._finish = choice.finish_reason
        content = ""
        thinking = None
        delta = choice.delta or choice.message
        if self._completion:
            content = choice.text or ""
        elif delta is not None:
            content = delta.content or ""
            thinking = delta.reasoning_content or delta.reasoning
            if delta.tool_calls:
                self._tools.add(delta.tool_calls)
        calls = self._tools.take() if choice.finish_reason and self._tools.calls else None
        if content or thinking or calls:
            return Piece(content, thinking, calls)
        return None

    async def aclose(self) -> None:
        await self._response.aclose()


class OpenAIUpstream:
    """One OpenAI-compatible server (`calls.upstream.Upstream`), over a transport it owns."""

    kind = "openai"
    # The server knows a model only by its exact id (`smollm2`, not `smollm2:latest`).
    exact_model_names = True

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        timeout: httpx.Timeout | None = None,
        *,
        name: str = "openai",
        max_line: int = MAX_LINE,
        max_body: int = MAX_BODY,
        api_key: str | None = None,
        first_byte: float | None = None,
    ) -> None:
        self.name = name
        address = base_url.rstrip("/")
        # OpenAI's own clients take the base URL with /v1; the root is accepted too.
        self.address = address.removesuffix("/v1")
        self.max_line = max_line
        self.max_body = max_body
        self._server = Server(
            transport,
            self.address,
            timeout,
            who=f"the OpenAI-compatible server at {self.address}",
            max_body=max_body,
            api_key=api_key,
            first_byte=first_byte,
        )
        self._chat_url = httpx.URL(self.address + "/v1/chat/completions")
        self._completions_url = httpx.URL(self.address + "/v1/completions")
        self._models_url = httpx.URL(self.address + "/v1/models")
        self._server_ids: dict[str, str] = {}

    async def aclose(self) -> None:
        await self._server.aclose()

    # -- HTTP --------------------------------------------------------------------------------

    def _request(self, method: str, url: httpx.URL, body: bytes | None = None) -> httpx.Request:
        return self._server.request(method, url, body)

    async def _call(self, request: httpx.Request) -> bytes:
        response = await self._server.send(request)
        data = await self._server.read(response)
        if response.status_code != 200:
            # Only a POST names a model: a GET's 404 (the model list) is a path not served.
            raise _status_error(
                response.status_code,
                data,
                self.address,
                request.url.path,
                named=request.method == "POST",
            )
        return data

    # -- the Upstream interface --------------------------------------------------------------

    async def _model_list(self) -> list[ModelInfo]:
        body = await self._call(self._request("GET", self._models_url))
        try:
            listed = _decode_models(body)
            entries = [(msgspec.convert(raw, wire.ModelEntry), raw) for raw in listed.data]
            capable = [msgspec.convert(raw, wire.Capable) for raw in listed.models or ()]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamBadResponse(
                f"/v1/models at {self.address} is not a model list: {exc}"
            ) from exc
        # What clients call each model, and the server's own id for it (see exposed_name).
        self._server_ids = {exposed_name(entry.id): entry.id for entry, _ in entries}
        capabilities = {c.model: c.capabilities for c in capable if c.capabilities}
        return [_model(entry, raw, capabilities.get(entry.id)) for entry, raw in entries]

    def _server_id(self, model: str) -> str:
        """The server's id for a model as the gateway names it."""
        return self._server_ids.get(model, model)

    async def models(self) -> list[ModelInfo]:
        return await self._model_list()

    async def loaded(self) -> list[LoadedModel]:
        """The models loaded now, with what llama-server's `meta` says of their memory."""
        loaded = []
        for info in await self._model_list():
            if info.loaded:
                meta = _meta(info)
                loaded.append(
                    LoadedModel(
                        **{f: getattr(info, f) for f in info.__struct_fields__},
                        memory=meta.size,
                        loaded_context=meta.n_ctx,
                    )
                )
        return loaded

    async def show(self, model: str) -> ModelInfo:
        for info in await self._model_list():
            if info.name == model:
                return info
        raise ModelNotFound(f"the server at {self.address} has no model {model!r}")

    async def version(self) -> str:
        """llama-server's build (GET /props); other servers say none."""
        try:
            body = await self._call(self._request("GET", httpx.URL(self.address + "/props")))
            return _decode_props(body).build_info or "unknown"
        except (UpstreamWrongAddress, UpstreamRejected, msgspec.DecodeError):
            return "unknown"

    async def capacity(self) -> int | None:
        """llama-server's slots (GET /props `total_slots`); None from a server that does not
        say, or says something no server could mean."""
        try:
            body = await self._call(self._request("GET", httpx.URL(self.address + "/props")))
            slots = _decode_props(body).total_slots
        except (UpstreamWrongAddress, UpstreamRejected, msgspec.DecodeError):
            return None
        return slots if slots is not None and 1 <= slots <= MAX_SLOTS else None

    async def health(self) -> list[UpstreamHealth]:
        state = UpstreamHealth(name=self.name, kind=self.kind, address=self.address, status="down")
        try:
            async with asyncio.timeout(PROBE_SECONDS):
                state.models = [m.name for m in await self.models()]
            state.status = "up"
        except UpstreamError as exc:
            state.error = exc.message
        except TimeoutError:
            state.error = f"the server at {self.address} did not answer within {PROBE_SECONDS:g} s"
        return [state]

    def _ask(self, request: CallRequest) -> httpx.Request:
        ask = self._ask_body(request)
        # llama-server closes the connection after every streamed answer without saying so
        # (no `Connection: close`; the next request on it reads EOF). Pooled, such a
        # connection is dead on reuse, and a POST is never sent twice: a call handed a slot
        # the moment another ended (the fair queue hands slots over at once) failed 502 on
        # the real model, 3-5 calls in 40. Asking for the close makes the server say it, so
        # the connection is never pooled; a call then opens its own (a connect, ~0.1 ms).
        ask.headers["Connection"] = "close"
        return ask

    def _ask_body(self, request: CallRequest) -> httpx.Request:
        body: dict[str, Any] = {
            "model": self._server_id(request.model),
            "stream": True,
            "stream_options": {"include_usage": True},
            **_generation(request.generation),
        }
        completion = request.completion
        if completion is None:
            body["messages"] = [_message(m) for m in request.messages]
            return self._request("POST", self._chat_url, _encode(body))
        # An empty one is an absent one, as Ollama reads them ("system": "" keeps the model's
        # own; "images": [] is no image): LiteLLM's ollama/ provider sends "images": [] always.
        asked = ("system", "template", "context", "images")
        unsupported = [name for name in asked if getattr(completion, name)]
        if unsupported:
            raise UpstreamRejected(
                f"an OpenAI-compatible upstream takes a raw prompt only, not "
                f"{', '.join(unsupported)}"
            )
        body["prompt"] = completion.prompt
        body.pop("tools", None)
        if completion.suffix:
            body["suffix"] = completion.suffix
        return self._request("POST", self._completions_url, _encode(body))

    async def answer(self, request: CallRequest) -> Answer:
        """A whole answer, asked for as a stream (calls/collect.py), read whole within
        max_body, and taken apart at once."""
        ask = self._ask(request)
        response = await self._server.send(ask)
        body = await self._server.read(response)
        if response.status_code != 200:
            raise _status_error(response.status_code, body, self.address, ask.url.path)
        parser = OpenAIStream(
            response, self._server, self.name, request.completion is not None, self.max_line
        )
        return parser.whole(body)

    async def open_stream(self, request: CallRequest) -> OpenAIStream:
        """Start a streamed answer; returns once the server has accepted it (status 200)."""
        ask = self._ask(request)
        response = await self._server.send(ask)
        if response.status_code != 200:
            body = await self._server.read(response)
            raise _status_error(response.status_code, body, self.address, ask.url.path)
        return OpenAIStream(
            response, self._server, self.name, request.completion is not None, self.max_line
        )

    async def embed(self, request: EmbedRequest) -> Embeddings:
        body: dict[str, Any] = {"model": self._server_id(request.model), "input": request.input}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        url = httpx.URL(self.address + "/v1/embeddings")
        data = await self._call(self._request("POST", url, _encode(body)))
        try:
            reply = _decode_embeddings(data)
        except msgspec.DecodeError as exc:
            raise UpstreamBadResponse(f"/v1/embeddings answer is unreadable: {exc}") from exc
        vectors = [item.embedding for item in sorted(reply.data, key=lambda item: item.index)]
        if len(vectors) != len(request.input):
            raise UpstreamBadResponse(
                f"/v1/embeddings gave {len(vectors)} vectors for {len(request.input)} inputs"
            )
        return Embeddings(
            vectors=vectors,
            input_tokens=reply.usage.prompt_tokens if reply.usage else None,
            upstream=self.name,
        )
