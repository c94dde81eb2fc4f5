"""Answers as Ollama writes them: NDJSON lines while streaming, one object otherwise, times in
RFC 3339 with nanoseconds, durations in nanoseconds."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from calls.events import Done, Event, Failed, Pieces
from calls.types import Answer, Metrics

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


def ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1e9)


def _metrics(metrics: Metrics) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": metrics.done_reason,
        "total_duration": ns(metrics.upstream_seconds),
        "load_duration": ns(metrics.load_seconds),
        "prompt_eval_count": metrics.input_tokens,
        "prompt_eval_duration": ns(metrics.prompt_eval_seconds),
        "eval_count": metrics.output_tokens,
        "eval_duration": ns(metrics.eval_seconds),
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
                **_metrics(event.metrics),
            )
            return _encode(final) + b"\n"
        if isinstance(event, Failed):
            return _ERROR_LINE % _encode(event.error.message)
        return b""


class GenerateLines(NDJSONFraming):
    """A completion's events as Ollama's NDJSON; the last line carries the context."""

    __slots__ = ("model",)

    def __init__(self, model: str) -> None:
        self.model = model

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
                context=event.metrics.context,
                **_metrics(event.metrics),
            )
            return _encode(final) + b"\n"
        if isinstance(event, Failed):
            return _ERROR_LINE % _encode(event.error.message)
        return b""


def chat_reply(model: str, answer: Answer) -> ChatReply:
    """A whole chat answer."""
    message = OutMessage("assistant", answer.content, answer.thinking, answer.tool_calls)
    return ChatReply(
        model=model, created_at=_clock.now(), message=message, **_metrics(answer.metrics)
    )


def generate_reply(model: str, answer: Answer) -> GenerateReply:
    """A whole completion."""
    return GenerateReply(
        model=model,
        created_at=_clock.now(),
        response=answer.content,
        thinking=answer.thinking,
        context=answer.metrics.context,
        **_metrics(answer.metrics),
    )
