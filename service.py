"""The ask pipeline: one call from request to usage record.

A `Call` is opened for every ask and finished exactly once, as `ok`, `error` or
`cancelled`; finishing it is what writes its usage record. Everything that can
end a call (an answer, an Ollama failure, a client that hangs up, a shutdown)
goes through `Call.finish`, and the first finish wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import msgspec

import keys
from errors import ApiError, api_error, error_body
from ollama_client import ChatStream, Message, Metrics, OllamaClient, OllamaError, Piece
from schemas import AskRequest, StartEvent, TokenEvent, Usage
from settings import Settings
from store import InputMessage, Status, UsageRecord, UsageStore, iso, new_id

log = logging.getLogger("ollama_host.calls")
_encode = msgspec.json.Encoder().encode


def messages_of(req: AskRequest) -> list[Message]:
    messages = [Message("system", req.template)] if req.template else []
    messages.append(Message("user", req.content))
    return messages


class Call:
    """One ask in flight: what has come back so far, and the clock."""

    def __init__(self, gateway: Gateway, req: AskRequest, *, streamed: bool) -> None:
        self.gateway = gateway
        self.req = req
        self.streamed = streamed
        self.id = new_id()
        self.date = iso(datetime.now(UTC))
        self.messages = messages_of(req)
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.pieces: list[str] = []
        self.thinking: list[str] = []
        self.record: UsageRecord | None = None

    def add(self, piece: Piece) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
        if piece.content:
            self.pieces.append(piece.content)
        if piece.thinking:
            self.thinking.append(piece.thinking)

    @property
    def output(self) -> str:
        return "".join(self.pieces)

    def finish(
        self, status: Status, metrics: Metrics | None = None, error: ApiError | None = None
    ) -> UsageRecord:
        """Write the call's one usage record; later calls return the same record."""
        if self.record is not None:
            return self.record
        metrics = metrics or Metrics()
        estimated = metrics.output_tokens is None and bool(self.pieces)
        output_tokens = len(self.pieces) if estimated else metrics.output_tokens
        total = (
            metrics.input_tokens + output_tokens
            if metrics.input_tokens is not None and output_tokens is not None
            else None
        )
        req = self.req
        self.record = UsageRecord(
            id=self.id,
            date=self.date,
            total_seconds=round(time.perf_counter() - self.started, 6),
            total_tokens=total,
            input_tokens=metrics.input_tokens,
            output_tokens=output_tokens,
            model_name=req.agent,
            input=[InputMessage(m.role, m.content) for m in self.messages],
            output=self.output,
            project=req.project,
            process_id=req.process_id,
            subprocess_id=req.subprocess_id,
            status=status,
            error=error.message if error else None,
            error_code=error.code if error else None,
            streamed=self.streamed,
            done_reason=metrics.done_reason,
            ttft_seconds=(
                None if self.first_token is None else round(self.first_token - self.started, 6)
            ),
            load_seconds=metrics.load_seconds,
            prompt_eval_seconds=metrics.prompt_eval_seconds,
            eval_seconds=metrics.eval_seconds,
            upstream_seconds=metrics.upstream_seconds,
            tokens_estimated=estimated,
            user=keys.fingerprint(self.gateway.secret, req.user_key) if req.user_key else None,
        )
        self.gateway.store.append(self.record)
        self.gateway.changes += 1
        log.info(
            "call %s model=%s status=%s streamed=%s tokens_in=%s tokens_out=%s seconds=%.3f%s",
            self.id,
            req.agent,
            status,
            self.streamed,
            metrics.input_tokens,
            output_tokens,
            self.record.total_seconds,
            f" error={error.code}" if error else "",
        )
        return self.record


class Gateway:
    """Asks Ollama and accounts for every call."""

    def __init__(
        self, settings: Settings, ollama: OllamaClient, store: UsageStore, secret: bytes
    ) -> None:
        self.settings = settings
        self.ollama = ollama
        self.store = store
        self.secret = secret
        # Bumped on every record appended: the admin endpoints' ETag, so an idle
        # dashboard's polls are answered 304 without reading the store.
        self.changes = 0

    async def ask(self, req: AskRequest) -> Call:
        """A whole answer at once. Raises ApiError; a cancelled ask is recorded as such."""
        call = Call(self, req, streamed=False)
        try:
            answer = await self.ollama.chat(req.agent, call.messages)
        except OllamaError as exc:
            error = api_error(exc)
            error.request_id = call.id
            call.finish("error", error=error)
            raise error from exc
        except asyncio.CancelledError:
            # The client hung up; the cancellation has already closed the upstream request.
            call.finish("cancelled")
            raise
        # Not `add`: a whole answer has no first token to time.
        call.pieces.append(answer.content)
        if answer.thinking:
            call.thinking.append(answer.thinking)
        call.finish("ok", answer.metrics)
        return call

    def stream(self, req: AskRequest) -> StreamedCall:
        return StreamedCall(Call(self, req, streamed=True))


def _event(name: str, seq: int, data: msgspec.Struct) -> bytes:
    # msgspec escapes every newline inside JSON strings, so one `data:` line always suffices.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name.encode(), _encode(data))


class StreamedCall:
    """A streamed ask: opens upstream, yields SSE events, and is always closed."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.id = call.id
        gateway = call.gateway
        self._opening = asyncio.ensure_future(
            gateway.ollama.open_chat(call.req.agent, call.messages)
        )
        self._stream: ChatStream | None = None

    async def wait_open(self, seconds: float) -> None:
        """Wait a moment for Ollama to accept, so that fast failures keep their HTTP status."""
        done, _ = await asyncio.wait({self._opening}, timeout=seconds)
        if not done:
            return
        exc = self._opening.exception()
        if isinstance(exc, OllamaError):
            error = api_error(exc)
            error.request_id = self.id
            self.call.finish("error", error=error)
            raise error from exc
        if exc is not None:
            raise exc

    async def events(self) -> AsyncIterator[bytes]:
        call = self.call
        yield _event("start", 0, StartEvent(call.id, call.req.agent))
        seq = 0
        try:
            self._stream = stream = await self._opening
            async for piece in stream:
                call.add(piece)
                seq += 1
                yield _event("token", seq, TokenEvent(piece.content, piece.thinking))
            record = call.finish("ok", stream.metrics)
            yield _event("done", seq + 1, Usage.of(record))
        except OllamaError as exc:
            error = api_error(exc)
            error.request_id = call.id
            call.finish("error", error=error)
            yield _event("error", seq + 1, error_body(error))

    async def aclose(self) -> None:
        """Close upstream (so Ollama stops generating) and record the call if nothing else did."""
        with anyio.move_on_after(5, shield=True):
            if not self._opening.done():
                self._opening.cancel()
                with contextlib.suppress(asyncio.CancelledError, OllamaError):
                    await self._opening
            stream = self._stream
            opened = self._opening
            if (
                stream is None
                and opened.done()
                and not opened.cancelled()
                and not opened.exception()
            ):
                stream = opened.result()
            if stream is not None:
                with contextlib.suppress(OllamaError):
                    await stream.aclose()
        self.call.finish("cancelled")
