"""Answers as OpenAI writes them: whole objects, or Server-Sent Events of chunks ending with
`data: [DONE]`. What the OpenAI API has no place for (load time, thinking) stays out of the
reply and in the record."""

from __future__ import annotations

import secrets
import time

import msgspec

from calls.events import Done, Event, Failed, Pieces
from calls.types import Answer, Metrics, ToolCall

from ..streaming import SSEFraming
from .errors import stream_error
from .schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    OpenAIUsage,
    TextChoice,
    TextCompletion,
    ToolCallFunctionOut,
    ToolCallOut,
)

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode


def _usage(metrics: Metrics) -> OpenAIUsage:
    prompt, completion = metrics.input_tokens or 0, metrics.output_tokens or 0
    return OpenAIUsage(prompt, completion, prompt + completion)


def _finish(metrics: Metrics, tools_called: bool) -> str:
    reason = metrics.done_reason or "stop"
    if reason == "stop" and tools_called:
        return "tool_calls"
    return reason if reason in ("stop", "length") else "stop"


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _tool_call_out(call: ToolCall, index: int | msgspec.UnsetType) -> ToolCallOut:
    function = ToolCallFunctionOut(call.function.name, _encode(call.function.arguments).decode())
    return ToolCallOut(id=call.id or _call_id(), function=function, index=index)


class ChatChunks(SSEFraming):
    """A chat's events as OpenAI's SSE chunks: the role with the first, a chunk per piece that
    has text or tool calls (thinking has no place here), a last chunk with the finish reason,
    and the usage in a chunk of its own when the client asked for it. `data: [DONE]` follows
    (the response's tail)."""

    tail = DONE
    __slots__ = (
        "chunk_id",
        "created",
        "head",
        "include_usage",
        "model",
        "role_sent",
        "tools_called",
    )

    def __init__(self, chunk_id: str, model: str, include_usage: bool) -> None:
        self.chunk_id = chunk_id
        self.model = model
        self.created = int(time.time())
        # Every chunk starts the same way: encoded once.
        self.head = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,' % (
            _encode(chunk_id),
            self.created,
            _encode(model),
        )
        self.include_usage = include_usage
        self.role_sent = False
        self.tools_called = 0

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return b'%s"system_fingerprint":"fp_ollama","choices":[%s]}\n\n' % (
            self.head,
            _encode(choice),
        )

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            out = []
            for piece in event.pieces:
                if not piece.content and not piece.tool_calls:
                    continue
                calls = None
                if piece.tool_calls:
                    calls = []
                    for call in piece.tool_calls:
                        calls.append(_tool_call_out(call, self.tools_called))
                        self.tools_called += 1
                role = None if self.role_sent else "assistant"
                self.role_sent = True
                out.append(self._chunk(Delta(role=role, content=piece.content, tool_calls=calls)))
            return b"".join(out)
        if isinstance(event, Done):
            last = self._chunk(Delta(), _finish(event.metrics, self.tools_called > 0))
            if self.include_usage:
                usage = ChatCompletionChunk(
                    id=self.chunk_id,
                    created=self.created,
                    model=self.model,
                    choices=[],
                    usage=_usage(event.metrics),
                )
                last += b"data: %s\n\n" % _encode(usage)
            return last
        if isinstance(event, Failed):
            return b"data: %s\n\n" % _encode(stream_error(event.error))
        return b""


class TextChunks(SSEFraming):
    """A completion's events as OpenAI's SSE chunks."""

    tail = DONE
    __slots__ = ("base", "include_usage")

    def __init__(self, chunk_id: str, model: str, include_usage: bool) -> None:
        self.base = TextCompletion(id=chunk_id, created=int(time.time()), model=model, choices=[])
        self.include_usage = include_usage

    def _data(self, choices: list[TextChoice], usage: OpenAIUsage | None = None) -> bytes:
        chunk = msgspec.structs.replace(self.base, choices=choices, usage=usage)
        return b"data: %s\n\n" % _encode(chunk)

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            return b"".join(
                self._data([TextChoice(text=p.content)]) for p in event.pieces if p.content
            )
        if isinstance(event, Done):
            last = self._data([TextChoice(text="", finish_reason=_finish(event.metrics, False))])
            if self.include_usage:
                last += self._data([], _usage(event.metrics))
            return last
        if isinstance(event, Failed):
            return b"data: %s\n\n" % _encode(stream_error(event.error))
        return b""


def chat_completion(chunk_id: str, model: str, answer: Answer) -> ChatCompletion:
    """A whole chat completion."""
    calls = [_tool_call_out(c, msgspec.UNSET) for c in answer.tool_calls or ()]
    message = AssistantMessage(
        content=answer.content if answer.content or not calls else None,
        tool_calls=calls or msgspec.UNSET,
    )
    return ChatCompletion(
        id=chunk_id,
        created=int(time.time()),
        model=model,
        choices=[Choice(message=message, finish_reason=_finish(answer.metrics, bool(calls)))],
        usage=_usage(answer.metrics),
    )


def text_completion(chunk_id: str, model: str, answer: Answer) -> TextCompletion:
    """A whole text completion."""
    return TextCompletion(
        id=chunk_id,
        created=int(time.time()),
        model=model,
        choices=[TextChoice(text=answer.content, finish_reason=_finish(answer.metrics, False))],
        usage=_usage(answer.metrics),
    )
