"""Answers as Anthropic writes them: a whole `message`, or its stream of named Server-Sent
Events: `message_start` (and a `ping`), then for each content block `content_block_start`,
its `content_block_delta`s (`thinking_delta`, `text_delta`, `input_json_delta`) and
`content_block_stop`, then `message_delta` (the stop reason and the usage) and
`message_stop`. A failure after the stream began is an `error` event.

Ollama reports the prompt's token count with its last line, so a stream's `message_start`
says 0 input tokens and `message_delta` gives the count (the Anthropic SDKs take it from
there). Upstreams do not say which stop sequence ended an answer: a stop is `end_turn`.
"""

from __future__ import annotations

import secrets

import msgspec

from calls.errors import CallError
from calls.events import Done, Event, Failed, Pieces, Started
from calls.types import Answer, Metrics, ToolCall

from ..streaming import SSEFraming
from .errors import error_body
from .schemas import (
    AnthropicMessage,
    AnthropicUsage,
    ContentBlock,
    MessageDelta,
    MessageDeltaBody,
    MessageDeltaUsage,
    MessageStart,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
)

_encode = msgspec.json.Encoder().encode

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _stop_reason(metrics: Metrics, tools_called: bool) -> StopReason:
    if metrics.done_reason == "length":
        return "max_tokens"
    return "tool_use" if tools_called else "end_turn"


def _tool_id(call: ToolCall) -> str:
    return call.id or "toolu_" + secrets.token_hex(12)


def _usage(metrics: Metrics) -> AnthropicUsage:
    return AnthropicUsage(
        input_tokens=metrics.input_tokens or 0, output_tokens=metrics.output_tokens or 0
    )


def message_of(message_id: str, model: str, answer: Answer) -> AnthropicMessage:
    """A whole answer: its thinking, its text, then its tool calls, as content blocks."""
    content: list[ContentBlock] = []
    if answer.thinking:
        content.append(ThinkingBlock(answer.thinking))
    if answer.content or not answer.tool_calls:
        content.append(TextBlock(answer.content))
    for call in answer.tool_calls or ():
        content.append(ToolUseBlock(_tool_id(call), call.function.name, call.function.arguments))
    return AnthropicMessage(
        id=message_id,
        model=model,
        content=content,
        stop_reason=_stop_reason(answer.metrics, bool(answer.tool_calls)),
        usage=_usage(answer.metrics),
    )


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name, data)


def error_event(error: CallError) -> bytes:
    return _event(b"error", _encode(error_body(error)))


# A block's start, by kind; tool_use blocks are started with their id and name.
_STARTS = {
    "text": b'{"type":"text","text":""}',
    "thinking": b'{"type":"thinking","thinking":"","signature":""}',
}
_DELTAS = {"text": b"text_delta", "thinking": b"thinking_delta"}
_FIELDS = {"text": b"text", "thinking": b"thinking"}


class MessageEvents(SSEFraming):
    """A call's events as Anthropic's stream: a block is opened when a piece of another kind
    (thinking, text, a tool call) comes, and the one before it closed."""

    __slots__ = ("headers", "index", "message_id", "model", "open", "tools_called")
    ping = PING

    def __init__(self, call_id: str, model: str) -> None:
        self.message_id = "msg_" + call_id
        # The call's id where the Anthropic SDKs read it (`_request_id`), besides X-Request-Id.
        self.headers = (*SSEFraming.headers, ("request-id", call_id))
        self.model = model
        # The index of the block being written (-1: none yet) and its kind (None: closed).
        self.index = -1
        self.open: str | None = None
        self.tools_called = False

    def _start(self, kind: str, block: bytes) -> bytes:
        self.index += 1
        self.open = kind
        return b"event: content_block_start\ndata: %s%d,%s%s}\n\n" % (
            b'{"type":"content_block_start","index":',
            self.index,
            b'"content_block":',
            block,
        )

    def _stop(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return (
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
            % self.index
        )

    def _delta(self, kind: str, text: str) -> bytes:
        out = b""
        if self.open != kind:
            out = self._stop() + self._start(kind, _STARTS[kind])
        return out + (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"%s","%s":%s}}\n\n'
            % (self.index, _DELTAS[kind], _FIELDS[kind], _encode(text))
        )

    def _tool(self, call: ToolCall) -> bytes:
        self.tools_called = True
        block = _encode(ToolUseBlock(_tool_id(call), call.function.name, {}))
        out = self._stop() + self._start("tool_use", block)
        arguments = _encode(_encode(call.function.arguments).decode())
        out += (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"input_json_delta","partial_json":%s}}\n\n' % (self.index, arguments)
        )
        return out + self._stop()

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            out = []
            for piece in event.pieces:
                if piece.thinking:
                    out.append(self._delta("thinking", piece.thinking))
                if piece.content:
                    out.append(self._delta("text", piece.content))
                for call in piece.tool_calls or ():
                    out.append(self._tool(call))
            return b"".join(out)
        if isinstance(event, Started):
            empty = AnthropicMessage(
                id=self.message_id,
                model=self.model,
                content=[],
                stop_reason=None,
                usage=AnthropicUsage(input_tokens=0, output_tokens=0),
            )
            return _event(b"message_start", _encode(MessageStart(empty))) + PING
        if isinstance(event, Done):
            metrics = event.metrics
            # A message has a block even when the answer is empty, as a whole answer has.
            first = self._start("text", _STARTS["text"]) if self.index < 0 else b""
            delta = MessageDelta(
                MessageDeltaBody(stop_reason=_stop_reason(metrics, self.tools_called)),
                MessageDeltaUsage(
                    input_tokens=metrics.input_tokens or 0,
                    output_tokens=metrics.output_tokens or 0,
                ),
            )
            return first + self._stop() + _event(b"message_delta", _encode(delta)) + _MESSAGE_STOP
        if isinstance(event, Failed):
            return error_event(event.error)
        return b""
