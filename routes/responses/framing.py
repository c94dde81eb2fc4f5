"""Answers as OpenAI's Responses API writes them: a whole `response` object, or its stream of
typed Server-Sent Events (`event: <type>` and a `data:` object of that type, each with its
`sequence_number`):

    response.created, response.in_progress
    per output item: response.output_item.added, then
        a message:   response.content_part.added, response.output_text.delta...,
                     response.output_text.done, response.content_part.done
        thinking:    a `reasoning` item, response.reasoning_text.delta..., .done
        a tool call: response.function_call_arguments.delta, .done
    response.output_item.done
    response.completed (or response.incomplete when max_output_tokens cut it short), with usage;
    response.failed, with the error, when the call fails after the stream began.

Upstream metrics the API has no place for (load time, timings) stay in the record.
"""

from __future__ import annotations

import secrets
import time

import msgspec

from calls.errors import CallError
from calls.events import Done, Event, Failed, Pieces, Started
from calls.types import Answer, Metrics, Piece, ToolCall

from ..streaming import SSEFraming
from .schemas import (
    ArgumentsDelta,
    ArgumentsDone,
    ContentPartEvent,
    FunctionCallOut,
    IncompleteDetails,
    MessageOut,
    OutputItem,
    OutputItemEvent,
    OutputText,
    ReasoningOut,
    ReasoningText,
    Response,
    ResponseError,
    ResponseLifecycle,
    ResponsesRequest,
    ResponseTextFormat,
    ResponseUsage,
    TextDone,
    TextOut,
    ToolOut,
)

_encode = msgspec.json.Encoder().encode
_replace = msgspec.structs.replace


def usage_of(metrics: Metrics) -> ResponseUsage:
    given, made = metrics.input_tokens or 0, metrics.output_tokens or 0
    return ResponseUsage(input_tokens=given, output_tokens=made, total_tokens=given + made)


def _status(metrics: Metrics) -> tuple[str, IncompleteDetails | None]:
    if metrics.done_reason == "length":
        return "incomplete", IncompleteDetails("max_output_tokens")
    return "completed", None


def _function_call(call: ToolCall, item_id: str, status: str) -> FunctionCallOut:
    return FunctionCallOut(
        id=item_id,
        call_id=call.id or "call_" + secrets.token_hex(12),
        name=call.function.name,
        arguments=_encode(call.function.arguments).decode(),
        status=status,
    )


def response_reply(template: Response, answer: Answer) -> Response:
    """A whole response: its thinking as a reasoning item, its text as a message, then its
    tool calls, each an item of its own."""
    status, incomplete = _status(answer.metrics)
    base = template.id.removeprefix("resp_")
    output: list[OutputItem] = []
    if answer.thinking:
        output.append(ReasoningOut(id=f"rs_{base}_0", content=[ReasoningText(answer.thinking)]))
    if answer.content or not answer.tool_calls:
        message_id = f"msg_{base}_{len(output)}"
        output.append(
            MessageOut(id=message_id, status=status, content=[OutputText(answer.content)])
        )
    for call in answer.tool_calls or ():
        output.append(_function_call(call, f"fc_{base}_{len(output)}", "completed"))
    return _replace(
        template,
        status=status,
        incomplete_details=incomplete,
        output=output,
        usage=usage_of(answer.metrics),
    )


class ResponseEvents(SSEFraming):
    """A call's events as the Responses API's stream. Items open as the answer turns from
    thinking to text to tool calls, and each is closed (its `.done` events) before the next
    opens, as the `openai` library's stream accumulator requires."""

    __slots__ = (
        "base",
        "delta_head",
        "delta_tail",
        "kind",
        "output",
        "parts",
        "sequence",
        "started",
        "template",
    )

    def __init__(self, template: Response) -> None:
        self.template = template
        self.base = template.id.removeprefix("resp_")
        self.sequence = 0
        self.started = False
        # The items closed so far, and the open one: its kind ("message", "reasoning" or
        # None) and the text it has had.
        self.output: list[OutputItem] = []
        self.kind: str | None = None
        self.parts: list[str] = []
        # A text delta's bytes around its sequence number and its text, made when its item
        # opens: a delta per token is the hot path.
        self.delta_head = b""
        self.delta_tail = b""

    def _event(self, kind: str, event: msgspec.Struct) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (kind.encode(), _encode(event))

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1

    def _lifecycle(self, kind: str, response: Response) -> bytes:
        return self._event(
            kind, ResponseLifecycle(type=kind, sequence_number=self._next(), response=response)
        )

    def _start(self) -> bytes:
        self.started = True
        return self._lifecycle("response.created", self.template) + self._lifecycle(
            "response.in_progress", self.template
        )

    def _open(self, kind: str) -> bytes:
        """Open a message or a reasoning item for text deltas."""
        index = len(self.output)
        if kind == "message":
            item_id = f"msg_{self.base}_{index}"
            item: OutputItem = MessageOut(id=item_id, status="in_progress", content=[])
            part: OutputText | ReasoningText = OutputText("")
            delta = b"response.output_text.delta"
        else:
            item_id = f"rs_{self.base}_{index}"
            item = ReasoningOut(id=item_id, status="in_progress")
            part = ReasoningText("")
            delta = b"response.reasoning_text.delta"
        self.kind, self.parts = kind, []
        self.delta_head = b'event: %s\ndata: {"type":"%s","sequence_number":' % (delta, delta)
        self.delta_tail = b',"item_id":"%s","output_index":%d,"content_index":0,"delta":' % (
            item_id.encode(),
            index,
        )
        added = OutputItemEvent(
            type="response.output_item.added",
            sequence_number=self._next(),
            output_index=index,
            item=item,
        )
        part_added = ContentPartEvent(
            type="response.content_part.added",
            sequence_number=self._next(),
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=part,
        )
        return self._event(added.type, added) + self._event(part_added.type, part_added)

    def _close(self, status: str = "completed") -> bytes:
        """Close the open item, if any: its text's `.done`, its part's, its own."""
        if self.kind is None:
            return b""
        index = len(self.output)
        text = "".join(self.parts)
        part: OutputText | ReasoningText
        item: OutputItem
        if self.kind == "message":
            item_id = f"msg_{self.base}_{index}"
            part = OutputText(text)
            item = MessageOut(id=item_id, status=status, content=[part])
            done = "response.output_text.done"
        else:
            item_id = f"rs_{self.base}_{index}"
            part = ReasoningText(text)
            item = ReasoningOut(id=item_id, content=[part], status=status)
            done = "response.reasoning_text.done"
        self.kind, self.parts = None, []
        self.output.append(item)
        text_done = TextDone(
            type=done,
            sequence_number=self._next(),
            item_id=item_id,
            output_index=index,
            content_index=0,
            text=text,
        )
        part_done = ContentPartEvent(
            type="response.content_part.done",
            sequence_number=self._next(),
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=part,
        )
        return b"".join(
            (
                self._event(done, text_done),
                self._event(part_done.type, part_done),
                self._item_done(index, item),
            )
        )

    def _item_done(self, index: int, item: OutputItem) -> bytes:
        done = OutputItemEvent(
            type="response.output_item.done",
            sequence_number=self._next(),
            output_index=index,
            item=item,
        )
        return self._event(done.type, done)

    def _text(self, kind: str, text: str) -> bytes:
        out = b"" if self.kind == kind else self._close() + self._open(kind)
        self.parts.append(text)
        return out + b'%s%d%s%s,"logprobs":[]}\n\n' % (
            self.delta_head,
            self._next(),
            self.delta_tail,
            _encode(text),
        )

    def _tool_call(self, call: ToolCall) -> bytes:
        out = self._close()
        index = len(self.output)
        item_id = f"fc_{self.base}_{index}"
        item = _function_call(call, item_id, "completed")
        self.output.append(item)
        added = OutputItemEvent(
            type="response.output_item.added",
            sequence_number=self._next(),
            output_index=index,
            item=_replace(item, arguments="", status="in_progress"),
        )
        delta = ArgumentsDelta(
            type="response.function_call_arguments.delta",
            sequence_number=self._next(),
            item_id=item_id,
            output_index=index,
            delta=item.arguments,
        )
        done = ArgumentsDone(
            type="response.function_call_arguments.done",
            sequence_number=self._next(),
            item_id=item_id,
            output_index=index,
            name=item.name,
            arguments=item.arguments,
        )
        return b"".join(
            (
                out,
                self._event(added.type, added),
                self._event(delta.type, delta),
                self._event(done.type, done),
                self._item_done(index, item),
            )
        )

    def _piece(self, piece: Piece) -> bytes:
        out = b""
        if piece.thinking:
            out += self._text("reasoning", piece.thinking)
        if piece.content:
            out += self._text("message", piece.content)
        for call in piece.tool_calls or ():
            out += self._tool_call(call)
        return out

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            out = b"" if self.started else self._start()
            if len(event.pieces) == 1:
                return out + self._piece(event.pieces[0])
            return out + b"".join([self._piece(p) for p in event.pieces])
        if isinstance(event, Done):
            status, incomplete = _status(event.metrics)
            out = b"" if self.started else self._start()
            if self.kind is None and not self.output:
                out += self._open("message")  # an empty answer is still a message
            out += self._close("incomplete" if incomplete else "completed")
            response = _replace(
                self.template,
                status=status,
                incomplete_details=incomplete,
                output=self.output,
                usage=usage_of(event.metrics),
            )
            kind = "response.incomplete" if incomplete else "response.completed"
            return out + self._lifecycle(kind, response)
        if isinstance(event, Failed):
            return self.failed(event.error)
        if isinstance(event, Started):
            return self._start()
        return b""

    def failed(self, error: CallError) -> bytes:
        """The stream's end when the call failed: what was made so far, and the error."""
        out = b"" if self.started else self._start()
        out += self._close("incomplete")
        response = _replace(
            self.template,
            status="failed",
            output=self.output,
            error=ResponseError(error.code, error.message),
        )
        return out + self._lifecycle("response.failed", response)


def template_of(response_id: str, body: ResponsesRequest) -> Response:
    """The response object before any answer: what the request asked, echoed as OpenAI does."""
    text_format = (
        body.text.format if body.text and body.text.format else ResponseTextFormat(type="text")
    )
    return Response(
        id=response_id,
        created_at=int(time.time()),
        status="in_progress",
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        model=body.model,
        output=[],
        parallel_tool_calls=body.parallel_tool_calls is not False,
        reasoning=body.reasoning,
        temperature=1.0 if body.temperature is None else body.temperature,
        text=TextOut(format=text_format),
        tool_choice="auto" if body.tool_choice is None else body.tool_choice,
        tools=[
            ToolOut(
                name=t.name or "",
                description=t.description,
                parameters=t.parameters,
                strict=t.strict,
            )
            for t in body.tools or ()
        ],
        top_p=1.0 if body.top_p is None else body.top_p,
        user=body.user,
        metadata=body.metadata or {},
    )
