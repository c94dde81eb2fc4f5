"""Answers as Ollama writes them: NDJSON lines while streaming, one object otherwise, times in
RFC 3339 with nanoseconds, durations in nanoseconds.

The last line (or the whole answer) carries every field Ollama's own does, whatever the
upstream said: clients validate them (the Vercel AI SDK's Ollama provider requires
`total_duration`, `load_duration` and `prompt_eval_count` on an embedding). What the upstream
reported goes as it reported it; what it did not is derived from the gateway's own account of
the call (its record), as docs/fronts.md lists:

- `total_duration`: the call's time at the gateway;
- `prompt_eval_duration`: a stream's time to its first piece at the gateway, else 0;
- `eval_duration`: what of the total the prompt does not take;
- `load_duration`: what of the total neither the prompt nor the generation takes;
- `prompt_eval_count`: 0 (the gateway counts no tokens); `eval_count`: the pieces relayed,
  one token each (the record's estimate);
- `done_reason`: `stop`; a completion's `context` (unless `raw`): `[]`.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from calls.events import Done, Event, Failed, Pieces
from calls.types import Answer, Embeddings, Metrics
from store.records import UsageRecord

from ..streaming import NDJSONFraming
from .schemas import ChatChunk, ChatReply, GenerateChunk, GenerateReply, OutMessage

_encode = msgspec.json.Encoder().encode

# -- time and durations ------------------------------------------------------------------------


class _Clock:
    """RFC 3339 UTC with nanoseconds, as Go writes time.Time, formatted once a second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def now(self) -> str:
        ns = time.time_ns()
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{fraction:09d}Z"


_clock = _Clock()


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _metrics(metrics: Metrics, record: UsageRecord) -> dict[str, Any]:
    """The last line's metrics: the upstream's, each one it did not report derived from the
    call's record (see the module's docstring)."""
    total = metrics.upstream_seconds
    if total is None:
        total = record.total_seconds
    prompt = metrics.prompt_eval_seconds
    if prompt is None:
        prompt = min(record.ttft_seconds or 0.0, total)
    generation = metrics.eval_seconds
    if generation is None:
        generation = max(0.0, total - prompt)
    load = metrics.load_seconds
    if load is None:
        load = max(0.0, total - prompt - generation)
    return {
        "done": True,
        "done_reason": metrics.done_reason or "stop",
        "total_duration": _ns(total),
        "load_duration": _ns(load),
        "prompt_eval_count": metrics.input_tokens or 0,
        "prompt_eval_duration": _ns(prompt),
        "eval_count": record.output_tokens or 0,
        "eval_duration": _ns(generation),
    }


def embed_metrics(result: Embeddings, record: UsageRecord) -> dict[str, int]:
    """An embedding's metrics, as `_metrics`: its total, else the call's time at the
    gateway; its load, else 0; its token count, else 0."""
    total = result.upstream_seconds
    return {
        "total_duration": _ns(record.total_seconds if total is None else total),
        "load_duration": _ns(result.load_seconds or 0.0),
        "prompt_eval_count": result.input_tokens or 0,
    }


# -- the stream framings -----------------------------------------------------------------------

_ERROR_LINE = b'{"error":%s}\n'


class ChatLines(NDJSONFraming):
    """A chat's events as Ollama's NDJSON: a line per piece, then the last line with the
    metrics, or an `{"error": ...}` line. A piece with only thinking or only tool calls is a
    line too."""

    __slots__ = ("model",)

    def __init__(self, model: str) -> None:
        self.model = model

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            model, now = self.model, _clock.now()
            return b"".join(
                _encode(
                    ChatChunk(
                        model,
                        now,
                        OutMessage("assistant", p.content, p.thinking, p.tool_calls),
                        False,
                    )
                )
                + b"\n"
                for p in event.pieces
            )
        if isinstance(event, Done):
            final = ChatReply(
                model=self.model,
                created_at=_clock.now(),
                message=OutMessage("assistant", ""),
                **_metrics(event.metrics, event.record),
            )
            return _encode(final) + b"\n"
        if isinstance(event, Failed):
            return _ERROR_LINE % _encode(event.error.message)
        return b""


class GenerateLines(NDJSONFraming):
    """A completion's events as Ollama's NDJSON; the last line carries the context."""

    __slots__ = ("model", "raw")

    def __init__(self, model: str, raw: bool | None) -> None:
        self.model = model
        self.raw = raw

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            model, now = self.model, _clock.now()
            return b"".join(
                _encode(GenerateChunk(model, now, p.content, False, p.thinking)) + b"\n"
                for p in event.pieces
            )
        if isinstance(event, Done):
            final = GenerateReply(
                model=self.model,
                created_at=_clock.now(),
                response="",
                context=_context(event.metrics, self.raw),
                **_metrics(event.metrics, event.record),
            )
            return _encode(final) + b"\n"
        if isinstance(event, Failed):
            return _ERROR_LINE % _encode(event.error.message)
        return b""


def _context(metrics: Metrics, raw: bool | None) -> list[int] | None:
    """The tokens a client may pass back to continue: Ollama sends them unless `raw`."""
    if metrics.context is not None or raw:
        return metrics.context
    return []


def chat_reply(model: str, answer: Answer, record: UsageRecord) -> ChatReply:
    """A whole chat answer."""
    message = OutMessage("assistant", answer.content, answer.thinking, answer.tool_calls)
    return ChatReply(
        model=model,
        created_at=_clock.now(),
        message=message,
        **_metrics(answer.metrics, record),
    )


def generate_reply(
    model: str, answer: Answer, record: UsageRecord, raw: bool | None
) -> GenerateReply:
    """A whole completion."""
    return GenerateReply(
        model=model,
        created_at=_clock.now(),
        response=answer.content,
        thinking=answer.thinking,
        context=_context(answer.metrics, raw),
        **_metrics(answer.metrics, record),
    )
