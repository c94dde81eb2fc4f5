"""The call pipeline: one neutral call from admission to its usage record.

A front decodes its own body into a `CallRequest`, `Labels` and `Credentials`, then asks the
`Gateway` for a whole answer (`answer`), a stream (`stream`) or embeddings (`embed`). The
gateway checks who asks and whether they may (access), asks the upstream, accounts for the call
(exactly one record, whatever happens) and hands back typed events or results. It knows no
front and no upstream by name: `Upstream` and `UsageStore` are interfaces it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from access.identity import Caller, Credentials, check_model, identify
from access.keys import Access
from access.limits import Limits
from store.base import UsageStore
from store.records import Status, UsageRecord

from .errors import (
    CallError,
    UpstreamBadResponse,
    UpstreamError,
    call_error,
    internal,
    shutting_down,
)
from .record import Call
from .shutdown import Drain, ShuttingDown
from .types import (
    Answer,
    CallRequest,
    Embeddings,
    EmbedRequest,
    Labels,
    Message,
    Metrics,
    ModelInfo,
    Piece,
)
from .upstream import AnswerStream, Upstream

log = logging.getLogger("ollama_host.calls")
T = TypeVar("T")

# With an upstream that is always ahead and a client that is gone (whose sends return at
# once), a stream could relay without ever suspending, so nothing else would run, not even
# the task that notices the hang-up. Every this many upstream reads, it yields to the loop.
YIELD_EVERY = 32
# Most texts one embedding call may carry (OpenAI's own limit): a body within --max-body can
# still hold 100,000 short strings, each of which the upstream would embed.
MAX_INPUTS = 2048


# -- the events a stream yields --------------------------------------------------------------


class Started(msgspec.Struct):
    """First: the call exists (its id is its record's), before any answer."""

    id: str
    model: str


class Pieces(msgspec.Struct):
    """What one upstream read brought: one piece, or several if they came together."""

    pieces: list[Piece]


class Done(msgspec.Struct):
    """Last, when the answer is complete: the upstream's metrics and the call's record."""

    metrics: Metrics
    record: UsageRecord


class Failed(msgspec.Struct):
    """Last, when the call failed or was cut off after it started."""

    error: CallError
    record: UsageRecord | None


Event = Started | Pieces | Done | Failed


class CallInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Where a call came from: its id (the request's), the front and the path it used."""

    id: str
    front: str
    endpoint: str


class Finished(msgspec.Struct):
    """A whole answer and its record."""

    answer: Answer
    record: UsageRecord


def labelled(labels: Labels, caller: Caller) -> Labels:
    """A call's labels: as the request gave them, the project defaulting to the key's own."""
    key = caller.key
    if labels.project is None and key is not None and key.project is not None:
        return msgspec.structs.replace(labels, project=key.project)
    return labels


class Gateway:
    """Asks the upstream and accounts for every call."""

    def __init__(
        self,
        upstream: Upstream,
        store: UsageStore,
        access: Access,
        limits: Limits,
        *,
        max_prompt: int,
        max_output: int,
    ) -> None:
        self.upstream = upstream
        self.store = store
        self.access = access
        self.limits = limits
        self.max_prompt = max_prompt
        self.max_output = max_output
        self.drain = Drain()
        # Called with each record as it is written (the request log's line uses it).
        self.observers: list[Callable[[UsageRecord], None]] = []

    # -- admission ---------------------------------------------------------------------------

    async def identify(self, credentials: Credentials) -> Caller:
        """Who is asking (CallError 401)."""
        return await identify(self.access, credentials)

    async def admit(
        self,
        credentials: Credentials,
        model: str,
        labels: Labels,
        prompt_size: int = 0,
        *,
        inputs: int = 1,
    ) -> Caller:
        """Who asks, whether they may use the model, whether the prompt (and, for embeddings,
        the number of `inputs`) fits, and whether the limits allow it now (401, 403, 413, 429);
        nothing has reached an upstream yet."""
        caller = await identify(self.access, credentials)
        check_model(caller, model)
        if prompt_size > self.max_prompt:
            raise CallError(
                413,
                "prompt_too_large",
                f"the prompt has {prompt_size} characters; the limit is {self.max_prompt}",
            )
        if inputs > MAX_INPUTS:
            raise CallError(
                413,
                "too_many_inputs",
                f"the call has {inputs} inputs; the limit is {MAX_INPUTS} a call, "
                "so split it into several",
            )
        await self.limits.admit(caller.key, labelled(labels, caller).project)
        return caller

    def _call(
        self,
        info: CallInfo,
        request: CallRequest,
        caller: Caller,
        labels: Labels,
        *,
        streamed: bool,
    ) -> Call:
        return Call(
            info.id,
            request,
            caller,
            labelled(labels, caller),
            front=info.front,
            endpoint=info.endpoint,
            streamed=streamed,
            max_output=self.max_output,
        )

    async def finish(
        self,
        call: Call,
        status: Status,
        metrics: Metrics | None = None,
        error: CallError | None = None,
    ) -> UsageRecord | None:
        """Write the call's one record (None if it was written already) and charge its tokens."""
        record = call.finish(status, metrics, error)
        if record is None:
            return None
        self.store.append(record)
        for observer in self.observers:
            observer(record)
        tokens = (record.input_tokens or 0) + (record.output_tokens or 0)
        if tokens and (call.caller.key is not None or record.project is not None):
            await self.limits.spend(call.caller.key, record.project, tokens)
        log.debug(
            "call %s model=%s status=%s streamed=%s tokens_in=%s tokens_out=%s seconds=%.3f%s",
            call.id,
            record.model_name,
            status,
            call.streamed,
            record.input_tokens,
            record.output_tokens,
            record.total_seconds,
            f" error={error.code}" if error else "",
        )
        return record

    # -- asking ------------------------------------------------------------------------------

    async def models(self) -> list[ModelInfo]:
        return await self.upstream.models()

    # What a front may relay of the upstream besides calls. None of these is a call, so none
    # is recorded; like models(), they fail with UpstreamError.

    async def loaded(self) -> list[dict[str, Any]]:
        """The models loaded in memory now, as the upstream describes them."""
        return await self.upstream.loaded()

    async def show(self, model: str) -> dict[str, Any]:
        """What the upstream says of one model."""
        return await self.upstream.show(model)

    async def version(self) -> str:
        return await self.upstream.version()

    async def _whole(self, call: Call, work: Awaitable[T]) -> T:
        """Await an upstream's whole result for `call`, recording any way it fails."""
        try:
            return await self.drain.guard(work)
        except ShuttingDown:
            error = shutting_down(call.id)
            await self.finish(call, "cancelled", error=error)
            raise error from None
        except UpstreamError as exc:
            _tried(call, exc)
            error = call_error(exc, call.id)
            await self.finish(call, "error", error=error)
            raise error from exc
        except asyncio.CancelledError:
            # The client hung up; the cancellation has already closed the upstream request.
            await self.finish(call, "cancelled")
            raise
        except BaseException:
            # Neither an answer nor a failure we know: a bug. Record the call before the
            # exception reaches the 500 handler, so no call goes unaccounted for.
            await self.finish(call, "error", error=internal(call.id))
            raise

    async def answer(
        self, info: CallInfo, request: CallRequest, caller: Caller, labels: Labels
    ) -> Finished:
        """A whole answer at once. Raises CallError; a cancelled call is recorded as such."""
        call = self._call(info, request, caller, labels, streamed=False)
        answer = await self._whole(call, self.upstream.answer(request))
        call.upstream, call.attempts = answer.upstream, answer.attempts
        if answer.content:
            call.output.add(answer.content)
        if answer.thinking:
            call.thinking.add(answer.thinking)
        if answer.tool_calls:
            call.tool_calls.extend(answer.tool_calls)
        # Not call.add: a whole answer has no first token to time, and it is one answer.
        call.chunks = 1
        record = await self.finish(call, "ok", answer.metrics)
        assert record is not None
        return Finished(answer, record)

    async def stream(
        self, info: CallInfo, request: CallRequest, caller: Caller, labels: Labels
    ) -> CallStream:
        """Open a streamed call, within the concurrent-stream limits (429 past them).

        The upstream request starts at once; iterate `events()`, and `aclose()` it always.
        """
        held = await self.limits.open_stream(caller.key)
        call = self._call(info, request, caller, labels, streamed=True)
        return CallStream(self, call, held)

    async def embed(
        self, info: CallInfo, request: EmbedRequest, caller: Caller, labels: Labels
    ) -> tuple[Embeddings, UsageRecord]:
        """Embeddings for every input, and the call's record (which keeps no vectors)."""
        texts = CallRequest(
            model=request.model, messages=[Message("user", t) for t in request.input]
        )
        call = self._call(info, texts, caller, labels, streamed=False)
        call.input_count = len(request.input)
        result = await self._whole(call, self.upstream.embed(request))
        call.upstream, call.attempts = result.upstream, result.attempts
        metrics = Metrics(
            input_tokens=result.input_tokens,
            output_tokens=0,
            upstream_seconds=result.upstream_seconds,
            load_seconds=result.load_seconds,
        )
        record = await self.finish(call, "ok", metrics)
        assert record is not None
        return result, record


def _tried(call: Call, source: AnswerStream | UpstreamError) -> None:
    """Which upstream served or failed the call, and after how many tries, as an answer
    stream or an upstream failure last said (a router sets both on its failures)."""
    if source.upstream is not None:
        call.upstream, call.attempts = source.upstream, source.attempts


class CallStream:
    """A streamed call: opens upstream, yields typed events, and is always closed."""

    def __init__(self, gateway: Gateway, call: Call, held: tuple[str, ...]) -> None:
        self.gateway = gateway
        self.call = call
        self.id = call.id
        self.model = call.request.model
        # This stream's places under the concurrency limits, given back once.
        self._held: tuple[str, ...] | None = held
        self._opening = asyncio.ensure_future(gateway.upstream.open_stream(call.request))
        self._stream: AnswerStream | None = None
        # Set by the front when its client has gone: the stream stops at its next step.
        self.gone = False
        # Why the call ends early, when it is not simply a hang-up.
        self.reason: CallError | None = None

    def stalled(self, seconds: float) -> None:
        """The client took nothing for `seconds`: the stream ends, recorded with this reason."""
        self.reason = CallError(
            408,
            "client_stalled",
            f"the client read nothing for {seconds:g} s (--send-timeout); the stream was closed",
            request_id=self.id,
        )

    async def wait_open(self, seconds: float) -> None:
        """Wait a moment for the upstream to accept, so that fast failures keep their HTTP
        status. Raises CallError (the call is then recorded) if the upstream refused."""
        done, _ = await asyncio.wait({self._opening}, timeout=seconds)
        if not done:
            return
        exc = self._opening.exception()
        if isinstance(exc, UpstreamError):
            _tried(self.call, exc)
            error = call_error(exc, self.id)
            await self.gateway.finish(self.call, "error", error=error)
            raise error from exc
        if exc is not None:
            raise exc

    async def events(self) -> AsyncIterator[Event]:
        call = self.call
        gateway = self.gateway
        drain = gateway.drain
        yield Started(call.id, call.request.model)
        try:
            # Not `await self._opening`: a cancelled awaiter cancels the task it awaits, and
            # the upstream's close must happen in aclose, shielded.
            await drain.guard(asyncio.wait({self._opening}))
            self._stream = stream = self._opening.result()
            call.upstream, call.attempts = stream.upstream, stream.attempts
            batches = stream.batches()
            task = asyncio.current_task()
            assert task is not None
            reads = 0
            while not self.gone:
                # drain.guard's steps, without its coroutine: this runs per upstream read.
                drain.waiting(task)
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if drain.cut_short(task):
                        raise ShuttingDown from None
                    raise
                finally:
                    drain.done_waiting(task)
                call.add(batch)
                yield Pieces(batch)
                reads += 1
                if reads % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            # A router may have tried another upstream before the first piece.
            _tried(call, stream)
            if self.gone:
                return
            metrics = stream.metrics
            if metrics is None:
                raise UpstreamBadResponse("the upstream's stream ended without its final account")
            record = await gateway.finish(call, "ok", metrics)
            if record is not None:
                yield Done(metrics, record)
        except ShuttingDown:
            # The last word before the server goes: the same error shape as any other.
            error = shutting_down(call.id)
            yield Failed(error, await gateway.finish(call, "cancelled", error=error))
        except UpstreamError as exc:
            _tried(call, self._stream if self._stream is not None else exc)
            error = call_error(exc, call.id)
            yield Failed(error, await gateway.finish(call, "error", error=error))

    async def aclose(self) -> None:
        """Close upstream (so it stops generating) and record the call if nothing else did."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        opening = self._opening
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await opening
        stream = self._stream
        if (
            stream is None
            and opening.done()
            and not opening.cancelled()
            and opening.exception() is None
        ):
            stream = opening.result()
        elif opening.done() and not opening.cancelled():
            opening.exception()  # retrieved: a failure already reported is not "never retrieved"
        if stream is not None:
            _tried(self.call, stream)
            with contextlib.suppress(UpstreamError, TimeoutError):
                await asyncio.wait_for(stream.aclose(), 5)
        await self.gateway.finish(self.call, "cancelled", error=self.reason)
        held, self._held = self._held, None
        if held is not None:
            await self.gateway.limits.close_stream(held)
