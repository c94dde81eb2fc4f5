"""One call's account: what was asked, what came back so far, the clock, and its one record.

An `Account` is made for every call on every front and finished exactly once, as `ok`, `error` or
`cancelled`; finishing it builds its usage record. Everything that can end a call (an answer,
an upstream failure, a client that hangs up, a shutdown) goes through `finish`, and the first
finish wins.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from access.identity import Caller
from store.records import InputMessage, Status, UsageRecord, iso

from .bounds import micro
from .errors import CallError
from .types import CallRequest, GpuUse, Labels, Message, Metrics, Piece, ToolCall

_to_builtins = msgspec.to_builtins


def _input_message(message: Message) -> InputMessage:
    return InputMessage(
        message.role,
        message.content,
        images=len(message.images) if message.images else None,
        tool_calls=_to_builtins(message.tool_calls) if message.tool_calls else None,
    )


def _seconds(value: float | None) -> float | None:
    """A duration as the record keeps it: to the nanosecond, the finest any upstream reports
    (milliseconds / 1000 left float noise such as 0.17858500000000002)."""
    return None if value is None else round(value, 9)


def input_of(request: CallRequest) -> list[InputMessage]:
    """What the record keeps of the prompt: each message's text (images only counted)."""
    completion = request.completion
    if completion is None:
        return [_input_message(m) for m in request.messages]
    messages = [InputMessage("system", completion.system)] if completion.system else []
    images = len(completion.images) if completion.images else None
    messages.append(InputMessage("user", completion.prompt, images=images))
    return messages


class Text:
    """Text that arrives in pieces, of which the record keeps the first `limit` characters."""

    __slots__ = ("chars", "kept", "limit", "parts")

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.chars = 0
        self.kept = 0
        self.limit = limit

    def add(self, text: str) -> None:
        self.chars += len(text)
        if self.kept < self.limit:
            room = self.limit - self.kept
            if len(text) > room:
                text = text[:room]
            self.parts.append(text)
            self.kept += len(text)

    @property
    def truncated(self) -> bool:
        return self.chars > self.kept

    def __str__(self) -> str:
        return "".join(self.parts)


class Timing:
    """Where one call's time goes (time.perf_counter readings): `received` is when its
    request's first byte arrived (the request log says; else when the account was made),
    `upstream_wait` how long it waited on the upstream itself (a whole answer's request, or a
    stream's opening and reads; `upstream_since` is a wait under way). With the account's
    `queue_seconds` (the wait for a slot), the rest, to the record, is the gateway's own.

    Its own small object, slotted: an Account with these as attributes of its own outgrew
    CPython's shared instance dictionaries (30 keys), and every call paid 12k instructions
    more to make and fill it."""

    __slots__ = (
        "received",
        "store_began",
        "store_ended",
        "upstream_began",
        "upstream_ended",
        "upstream_since",
        "upstream_wait",
    )

    def __init__(self, now: float) -> None:
        self.received = now
        self.upstream_wait = 0.0
        self.upstream_since: float | None = None
        # For the call's trace: when it first asked the upstream and last heard from it, and
        # when its record went to the store.
        self.upstream_began: float | None = None
        self.upstream_ended: float | None = None
        self.store_began = self.store_ended = 0.0


class Account:
    """One call in flight: its request, its caller, the answer so far, and the clock
    (`timing`, and `queue_seconds`, which the router sets when a slot is granted)."""

    def __init__(
        self,
        call_id: str,
        request: CallRequest,
        caller: Caller,
        labels: Labels,
        front: str,
        endpoint: str,
        streamed: bool,
        max_output: int,
    ) -> None:
        # Not keyword-only: one is made per call, and a class called with keywords gets them
        # as a dict.
        self.id = call_id
        self.request = request
        self.caller = caller
        self.labels = labels
        self.front = front
        self.endpoint = endpoint
        self.streamed = streamed
        self.date = iso(datetime.now(UTC))
        self.started = time.perf_counter()
        self.timing = Timing(self.started)
        self.queue_seconds: float | None = None
        # The caller's W3C trace context.
        self.trace: str | None = None
        # What a watcher of traces keeps with the call while it runs (telemetry/tracing.py).
        self.span: Any = None
        self.operation = "chat"
        # Whether this call made the upstream load its model, and what that load unloaded.
        self.cold_start: bool | None = None
        self.evicted: str | None = None
        self.first_token: float | None = None
        self.output = Text(max_output)
        self.thinking = Text(max_output)
        self.tool_calls: list[ToolCall] = []
        # Chunks that carried anything (text, thinking or tool calls): the output token count
        # when the upstream never sent its own (a cancelled or failed stream).
        self.chunks = 0
        self.upstream: str | None = None
        self.attempts: int | None = None
        self.input_count: int | None = None
        # The GPU time it used, when the upstream's final account did not bring it (a call
        # that failed or was cancelled).
        self.gpu: GpuUse | None = None
        self.record: UsageRecord | None = None
        # The class it was served at in the fair queue (the wait is `queue_seconds`).
        self.priority: str | None = None

    def queued(self, seconds: float) -> None:
        """The call got its upstream slot after waiting `seconds` in the gateway. A failover
        waits again for a slot on the next upstream: the waits add up, so neither counts as
        the upstream's time."""
        queued = self.queue_seconds
        self.queue_seconds = seconds if queued is None else queued + seconds

    def waited_upstream(self) -> None:
        """The wait on the upstream that began at `upstream_since` is over: add it (less the
        part of it spent in the queue, which the router noted meanwhile)."""
        timing = self.timing
        since = timing.upstream_since
        if since is not None:
            timing.upstream_since = None
            timing.upstream_ended = now = time.perf_counter()
            waited = now - since - (self.queue_seconds or 0.0)
            timing.upstream_wait += max(waited, 0.0)

    def split(self, now: float) -> tuple[float, float | None, float]:
        """The call's time so far: the gateway's own, the queue's, and the upstream's."""
        queue = self.queue_seconds
        timing = self.timing
        upstream = timing.upstream_wait
        since = timing.upstream_since
        if since is not None:
            upstream += max(now - since - (queue or 0.0), 0.0)
        gateway = now - timing.received - upstream - (queue or 0.0)
        return max(gateway, 0.0), queue, upstream

    def add(self, pieces: list[Piece]) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
        for piece in pieces:
            self.chunks += 1
            if piece.content:
                self.output.add(piece.content)
            if piece.thinking:
                self.thinking.add(piece.thinking)
            if piece.tool_calls:
                self.tool_calls.extend(piece.tool_calls)

    def finish(
        self, status: Status, metrics: Metrics | None = None, error: CallError | None = None
    ) -> UsageRecord | None:
        """Build the call's one usage record; None if it was finished already."""
        if self.record is not None:
            return None
        metrics = metrics or Metrics()
        estimated = metrics.output_tokens is None and self.chunks > 0
        output_tokens = self.chunks if estimated else metrics.output_tokens
        total = (
            metrics.input_tokens + output_tokens
            if metrics.input_tokens is not None and output_tokens is not None
            else None
        )
        labels = self.labels
        output, thinking = self.output, self.thinking
        now = time.perf_counter()
        gateway, queue, _ = self.split(now)
        truncated = output.truncated or thinking.truncated
        gpu = metrics.gpu or self.gpu
        self.record = UsageRecord(
            id=self.id,
            date=self.date,
            total_seconds=micro(now - self.started),
            total_tokens=total,
            input_tokens=metrics.input_tokens,
            output_tokens=output_tokens,
            model_name=self.request.model,
            input=input_of(self.request),
            output=str(output),
            project=labels.project,
            process_id=labels.process_id,
            subprocess_id=labels.subprocess_id,
            status=status,
            error=error.message if error else None,
            error_code=error.code if error else None,
            streamed=self.streamed,
            done_reason=metrics.done_reason,
            ttft_seconds=(
                None if self.first_token is None else micro(self.first_token - self.started)
            ),
            load_seconds=_seconds(metrics.load_seconds),
            prompt_eval_seconds=_seconds(metrics.prompt_eval_seconds),
            eval_seconds=_seconds(metrics.eval_seconds),
            upstream_seconds=_seconds(metrics.upstream_seconds),
            tokens_estimated=estimated,
            user=self.caller.fingerprint,
            key_id=self.caller.key.id if self.caller.key else None,
            key_label=self.caller.label,
            front=self.front,
            endpoint=self.endpoint,
            upstream=self.upstream,
            attempts=self.attempts,
            thinking=str(thinking) if thinking.chars else None,
            tool_calls=_to_builtins(self.tool_calls) if self.tool_calls else None,
            output_truncated=truncated,
            output_chars=output.chars if truncated else None,
            input_count=self.input_count,
            queue_seconds=None if queue is None else micro(queue),
            priority=self.priority,
            gpu_seconds=gpu.seconds if gpu else None,
            cost=gpu.cost if gpu else None,
            gateway_seconds=micro(gateway),
            cold_start=self.cold_start,
            evicted=self.evicted,
        )
        return self.record
