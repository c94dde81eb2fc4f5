"""The call pipeline: one neutral call from admission to its usage record.

A front turns its body into an `Ask` (the neutral request, the credentials, the labels,
whether it streams) and makes ONE call, `Gateway.call(ask)`. That checks who asks and whether
they may (401, 403, 413, 429: nothing has reached an upstream yet), and gives back a `Call`:

- `await call.answer()` (or `call.embeddings()`): the whole result and its record;
- `call.events()`: a stream's typed events (`calls.events`), the upstream request already
  accepted, or refused with its own status, within `open_wait` seconds;
- `call.gone = True` / `call.stalled(seconds)`: the front's client left, or stopped reading;
- `await call.aclose()`: always, at the end; it closes the upstream request if one is open
  and records the call as `cancelled` if nothing else recorded it.

Every call gets exactly one record, whatever ends it. The pipeline knows no front and no
upstream by name: `Upstream` and `UsageStore` are interfaces it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import msgspec

from access.identity import Caller, Credentials, check_model, identify
from access.keys import Access
from access.limits import Limits
from queueing import Place, Priority
from queueing import current as current_place
from queueing.place import served
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
from .events import Done, Event, Failed, Loading, Pieces, Queued, Started
from .options import Pinned
from .record import Account
from .shutdown import Drain, ShuttingDown
from .types import (
    Answer,
    CallRequest,
    Embeddings,
    EmbedRequest,
    GpuUse,
    Labels,
    LoadedModel,
    Message,
    Metrics,
    ModelInfo,
)
from .upstream import AnswerStream, Upstream, gpu_tab, queued_call

log = logging.getLogger("ollama_host.calls")
T = TypeVar("T")
# What is asked: a chat or completion, or embeddings.
Q = TypeVar("Q", CallRequest, EmbedRequest)
# What a whole call gives back.
R = TypeVar("R", Answer, Embeddings)

# With an upstream that is always ahead and a client that is gone (whose sends return at
# once), a stream could relay without ever suspending, so nothing else would run, not even
# the task that notices the hang-up. Every this many upstream reads, it yields to the loop.
YIELD_EVERY = 32
# Most texts one embedding call may carry (OpenAI's own limit): a body within --max-body can
# still hold 100,000 short strings, each of which the upstream would embed.
MAX_INPUTS = 2048
NO_LABELS = Labels()
# While a stream waits for its slot, it looks at its place in line this often, and a `queued`
# event goes out when the place changed: at most two a second.
QUEUE_TICK = 0.5


class Ask(msgspec.Struct, Generic[Q], frozen=True, kw_only=True):
    """What a front hands the pipeline: the neutral request, who asks, how the call is
    accounted, whether it streams, and where it came from (its id is its request's)."""

    request: Q
    credentials: Credentials
    labels: Labels = NO_LABELS
    stream: bool = False
    id: str
    front: str
    endpoint: str
    # The class the caller asked for (X-Priority); served at most at its key's own.
    priority: Priority | None = None
    # The caller's W3C trace context (its `traceparent` header), for --otlp.
    trace: str | None = None


class Watcher(Protocol):
    """What watches calls go by (the metrics, the traces): told when a call is admitted,
    when a stream holds a place and gives it back, and when the call is recorded."""

    def admitted(self, account: Account) -> None: ...

    def stream_opened(self, account: Account) -> None: ...

    def stream_closed(self, account: Account) -> None: ...

    def finished(self, account: Account, record: UsageRecord) -> None: ...


class Finished(msgspec.Struct, Generic[R]):
    """A whole result (an answer, or embeddings) and the call's record."""

    result: R
    record: UsageRecord


def labelled(labels: Labels, caller: Caller) -> Labels:
    """A call's labels: as the request gave them, the project defaulting to the key's own."""
    key = caller.key
    if labels.project is None and key is not None and key.project is not None:
        return msgspec.structs.replace(labels, project=key.project)
    return labels


class Gateway:
    """Admits calls, asks the upstream, and accounts for every call."""

    def __init__(
        self,
        upstream: Upstream,
        store: UsageStore,
        access: Access,
        limits: Limits,
        *,
        max_prompt: int,
        max_output: int,
        open_wait: float = 0.5,
        share_by: str = "key",
        pinned: Pinned | None = None,
    ) -> None:
        self.upstream = upstream
        self.store = store
        self.access = access
        self.limits = limits
        self.max_prompt = max_prompt
        self.max_output = max_output
        # How long a stream waits for its upstream to accept before its response starts, so
        # that fast failures keep their HTTP status.
        self.open_wait = open_wait
        # What the fair queue divides slots among: "key" or "project" (docs/queue.md).
        self.share_by = share_by
        # Options the operator pinned per model (--model-options), over what callers ask.
        self.pinned = pinned
        self.drain = Drain()
        # Called with each record as it is written (the request log's line uses it).
        self.observers: list[Callable[[UsageRecord], None]] = []
        # Called with each call's account as it is admitted (the request log's Server-Timing).
        self.starters: list[Callable[[Account], None]] = []
        self.watchers: list[Watcher] = []

    # -- the one call ------------------------------------------------------------------------

    async def call(self, ask: Ask[Q]) -> Call[Q]:
        """Admit `ask` and start it (see the module's docstring). Raises CallError."""
        caller = await self.admit(ask)
        request = ask.request
        if self.pinned is not None:
            request = self.pinned.apply(request)
            ask = msgspec.structs.replace(ask, request=request)
        inputs = None
        if isinstance(request, EmbedRequest):
            # The record keeps the texts as the prompt, never the vectors.
            inputs = len(request.input)
            asked = CallRequest(
                model=request.model, messages=[Message("user", t) for t in request.input]
            )
        else:
            asked = request
        # By position (front, endpoint, streamed, max_output): see Account.
        account = Account(
            ask.id,
            asked,
            caller,
            labelled(ask.labels, caller),
            ask.front,
            ask.endpoint,
            ask.stream,
            self.max_output,
        )
        account.trace = ask.trace
        # The operation, in the OpenTelemetry GenAI conventions' words ("chat" unless said).
        if inputs is not None:
            account.input_count = inputs
            account.operation = "embeddings"
        elif asked.completion is not None:
            account.operation = "text_completion"
        # For the router, which notes the queue wait on it (a stream's opening task too).
        queued_call.set(account)
        for starter in self.starters:
            starter(account)
        for watcher in self.watchers:
            watcher.admitted(account)
        place = self.place_of(ask, caller, account)
        if not ask.stream:
            return Call(self, ask, caller, account, None, place)
        held = await self.limits.open_stream(caller.key)
        call = Call(self, ask, caller, account, held, place)
        for watcher in self.watchers:
            watcher.stream_opened(account)
        assert isinstance(request, CallRequest)
        timing = account.timing
        timing.upstream_since = timing.upstream_began = time.perf_counter()
        # The opening runs in a task of its own, which takes a copy of the context as it is
        # made: the place in line and the GPU tab go with it.
        place_token = current_place.set(place)
        token = gpu_tab.set(call._tab)
        try:
            call._opening = asyncio.ensure_future(self.upstream.open_stream(request))
        finally:
            gpu_tab.reset(token)
            current_place.reset(place_token)
        try:
            await call._wait_open(self.open_wait)
        except BaseException:
            await call.aclose()
            raise
        return call

    def place_of(self, ask: Ask[Q], caller: Caller, account: Account) -> Place:
        """The call's place in the fair queue: its tenant, class and weight."""
        key = caller.key
        project = account.labels.project
        if key is not None:
            own: Priority = key.priority
            weight = key.weight
        else:
            own, weight = "interactive", 1.0
        if self.share_by == "project":
            tenant = f"p:{project}" if project else (f"k:{key.id}" if key else "")
        else:
            tenant = f"k:{key.id}" if key else (f"p:{project}" if project else "")
        asked = ask.priority
        priority = served(own, asked)
        account.priority = priority
        # By position (see Place): tenant, key label, project, class, the class asked for,
        # weight, model, and what to tell when a slot is granted.
        return Place(
            tenant,
            caller.label,
            project,
            priority,
            asked,
            weight,
            ask.request.model,
            account.queued,
        )

    async def admit(self, ask: Ask[Q]) -> Caller:
        """Who asks, whether they may use the model, whether the prompt (and, for embeddings,
        the number of inputs) fits, and whether the limits allow it now (401, 403, 413, 429);
        nothing has reached an upstream yet."""
        caller = await identify(self.access, ask.credentials)
        request = ask.request
        check_model(caller, request.model)
        if isinstance(request, EmbedRequest):
            size, inputs = sum(map(len, request.input)), len(request.input)
        else:
            size, inputs = request.prompt_size(), 1
        if size > self.max_prompt:
            raise CallError(
                413,
                "prompt_too_large",
                f"the prompt has {size} characters; the limit is {self.max_prompt}",
            )
        if inputs > MAX_INPUTS:
            raise CallError(
                413,
                "too_many_inputs",
                f"the call has {inputs} inputs; the limit is {MAX_INPUTS} a call, "
                "so split it into several",
            )
        await self.limits.admit(caller.key, labelled(ask.labels, caller).project)
        return caller

    async def finish(
        self,
        account: Account,
        status: Status,
        metrics: Metrics | None = None,
        error: CallError | None = None,
    ) -> UsageRecord | None:
        """Write the call's one record (None if it was written already) and charge its tokens."""
        record = account.finish(status, metrics, error)
        if record is None:
            return None
        timing = account.timing
        timing.store_began = time.perf_counter()
        self.store.append(record)
        timing.store_ended = time.perf_counter()
        for observer in self.observers:
            observer(record)
        for watcher in self.watchers:
            watcher.finished(account, record)
        tokens = (record.input_tokens or 0) + (record.output_tokens or 0)
        key, project = account.caller.key, record.project
        if tokens and (key is not None or project is not None):
            await self.limits.spend(key, project, tokens)
        if record.gpu_seconds and self.limits.counts_gpu(key, project):
            await self.limits.spend_gpu(key, project, record.gpu_seconds)
        log.debug(
            "call %s model=%s status=%s streamed=%s tokens_in=%s tokens_out=%s seconds=%.3f%s",
            account.id,
            record.model_name,
            status,
            account.streamed,
            record.input_tokens,
            record.output_tokens,
            record.total_seconds,
            f" error={error.code}" if error else "",
        )
        return record

    # -- what a front may relay of the upstream besides calls ---------------------------------
    # None of these is a call, so none is recorded; they fail with UpstreamError.

    async def identify(self, credentials: Credentials) -> Caller:
        """Who is asking (CallError 401)."""
        return await identify(self.access, credentials)

    async def models(self) -> list[ModelInfo]:
        return await self.upstream.models()

    async def loaded(self) -> list[LoadedModel]:
        """The models loaded in memory now."""
        return await self.upstream.loaded()

    async def show(self, model: str) -> ModelInfo:
        """Everything the upstream says of one model."""
        return await self.upstream.show(model)

    async def version(self) -> str:
        return await self.upstream.version()


def _tried(account: Account, source: AnswerStream | UpstreamError) -> None:
    """Which upstream served or failed the call, and after how many tries, as an answer
    stream or an upstream failure last said (a router sets both on its failures)."""
    if source.upstream is not None:
        account.upstream, account.attempts = source.upstream, source.attempts
    if source.gpu is not None:
        account.gpu = source.gpu


class Call(Generic[Q]):
    """One admitted call: its whole result, or its stream of events; always closed."""

    # One is made per call: slots make it cheaper to make.
    __slots__ = (
        "_held",
        "_opening",
        "_stream",
        "_tab",
        "account",
        "ask",
        "caller",
        "gateway",
        "gone",
        "id",
        "model",
        "place",
        "reason",
    )

    def __init__(
        self,
        gateway: Gateway,
        ask: Ask[Q],
        caller: Caller,
        account: Account,
        held: tuple[str, ...] | None = None,
        place: Place | None = None,
    ) -> None:
        self.gateway = gateway
        self.ask: Ask[Q] = ask
        self.id = ask.id
        self.model = ask.request.model
        self.caller = caller
        self.account = account
        # A stream's places under the concurrency limits, given back once.
        self._held = held
        self._opening: asyncio.Future[AnswerStream] | None = None
        # GPU time a router charged for a stream closed while it was still opening.
        self._tab: list[GpuUse] = []
        self._stream: AnswerStream | None = None
        # Set by the front when its client has gone: a stream stops at its next step.
        self.gone = False
        # Why the call ends early, when it is not simply a hang-up.
        self.reason: CallError | None = None
        # Its place in the fair queue (who it is accounted to, its class, its wait).
        self.place = place

    @property
    def record(self) -> UsageRecord | None:
        """The call's record, once written."""
        return self.account.record

    # -- a whole result ----------------------------------------------------------------------

    async def answer(self: Call[CallRequest]) -> Finished[Answer]:
        """The whole answer. Raises CallError; a cancelled call is recorded as such."""
        account = self.account
        answer = await self._whole(self.gateway.upstream.answer(self.ask.request))
        account.upstream, account.attempts = answer.upstream, answer.attempts
        if answer.content:
            account.output.add(answer.content)
        if answer.thinking:
            account.thinking.add(answer.thinking)
        if answer.tool_calls:
            account.tool_calls.extend(answer.tool_calls)
        # Not account.add: a whole answer has no first token to time, and it is one answer.
        account.chunks = 1
        record = await self.gateway.finish(account, "ok", answer.metrics)
        assert record is not None
        return Finished(answer, record)

    async def embeddings(self: Call[EmbedRequest]) -> Finished[Embeddings]:
        """Embeddings for every input; the record keeps no vectors."""
        account = self.account
        result = await self._whole(self.gateway.upstream.embed(self.ask.request))
        account.upstream, account.attempts = result.upstream, result.attempts
        metrics = Metrics(
            input_tokens=result.input_tokens,
            output_tokens=0,
            upstream_seconds=result.upstream_seconds,
            load_seconds=result.load_seconds,
            gpu=result.gpu,
        )
        record = await self.gateway.finish(account, "ok", metrics)
        assert record is not None
        return Finished(result, record)

    async def _whole(self, work: Awaitable[T]) -> T:
        """Await an upstream's whole result, recording any way it fails."""
        account = self.account
        gateway = self.gateway
        place_token = current_place.set(self.place)
        tab: list[GpuUse] = []
        token = gpu_tab.set(tab)
        timing = account.timing
        timing.upstream_since = timing.upstream_began = time.perf_counter()
        try:
            try:
                return await gateway.drain.guard(work)
            finally:
                # The wait on the upstream ends here, before the record is made.
                account.waited_upstream()
        except ShuttingDown:
            account.gpu = tab[-1] if tab else None
            error = shutting_down(account.id)
            await gateway.finish(account, "cancelled", error=error)
            raise error from None
        except UpstreamError as exc:
            _tried(account, exc)
            error = call_error(exc, account.id)
            await gateway.finish(account, "error", error=error)
            raise error from exc
        except asyncio.CancelledError:
            # The client hung up; the cancellation has already closed the upstream request.
            account.gpu = tab[-1] if tab else None
            await gateway.finish(account, "cancelled")
            raise
        except BaseException:
            # Neither an answer nor a failure we know: a bug. Record the call before the
            # exception reaches the 500 handler, so no call goes unaccounted for.
            account.gpu = tab[-1] if tab else None
            await gateway.finish(account, "error", error=internal(account.id))
            raise
        finally:
            gpu_tab.reset(token)
            current_place.reset(place_token)

    # -- a stream ------------------------------------------------------------------------------

    def stalled(self, seconds: float) -> None:
        """The client took nothing for `seconds`: the stream ends, recorded with this reason."""
        self.reason = CallError(
            408,
            "client_stalled",
            f"the client read nothing for {seconds:g} s (--send-timeout); the stream was closed",
            request_id=self.id,
        )

    async def _wait_open(self, seconds: float) -> None:
        """Wait a moment for the upstream to accept, so that fast failures keep their HTTP
        status. Raises CallError (the call is then recorded) if the upstream refused."""
        assert self._opening is not None
        done, _ = await asyncio.wait({self._opening}, timeout=seconds)
        if not done:
            return
        exc = self._opening.exception()
        if isinstance(exc, UpstreamError):
            self.account.waited_upstream()
            _tried(self.account, exc)
            error = call_error(exc, self.id)
            await self.gateway.finish(self.account, "error", error=error)
            raise error from exc
        if exc is not None:
            raise exc

    async def events(self: Call[CallRequest]) -> AsyncIterator[Event]:
        """The stream's events: Started, Pieces as they come, then Done or Failed."""
        account = self.account
        gateway = self.gateway
        drain = gateway.drain
        opening = self._opening
        assert opening is not None, "events() is for an ask with stream=True"
        yield Started(account.id, account.request.model)
        try:
            # Not `await opening`: a cancelled awaiter cancels the task it awaits, and the
            # upstream's close must happen in aclose, shielded.
            if self.place is not None:
                async for event in self._waiting(opening):
                    yield event
            elif not opening.done():
                await drain.guard(asyncio.wait({opening}))
            account.waited_upstream()
            self._stream = stream = opening.result()
            account.upstream, account.attempts = stream.upstream, stream.attempts
            batches = stream.batches()
            task = asyncio.current_task()
            assert task is not None
            reads = 0
            clock = time.perf_counter
            timing = account.timing
            while not self.gone:
                # drain.guard's steps, without its coroutine: this runs per upstream read.
                drain.waiting(task)
                began = clock()
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
                    timing.upstream_ended = now = clock()
                    timing.upstream_wait += now - began
                account.add(batch)
                yield Pieces(batch)
                reads += 1
                if reads % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            # A router may have tried another upstream before the first piece.
            _tried(account, stream)
            if self.gone:
                return
            metrics = stream.metrics
            if metrics is None:
                raise UpstreamBadResponse("the upstream's stream ended without its final account")
            record = await gateway.finish(account, "ok", metrics)
            if record is not None:
                yield Done(metrics, record)
        except ShuttingDown:
            # The last word before the server goes: the same error shape as any other.
            error = shutting_down(account.id)
            yield Failed(error, await gateway.finish(account, "cancelled", error=error))
        except UpstreamError as exc:
            _tried(account, self._stream if self._stream is not None else exc)
            error = call_error(exc, account.id)
            yield Failed(error, await gateway.finish(account, "error", error=error))

    async def _waiting(self, opening: asyncio.Future[AnswerStream]) -> AsyncIterator[Event]:
        """While the stream waits to open: where it stands in the fair queue whenever that
        changes (looked at every QUEUE_TICK seconds), and whether its upstream must load the
        model first."""
        place = self.place
        assert place is not None
        guard = self.gateway.drain.guard
        told: tuple[int, int] | None = None
        loading_told = False
        while True:
            standing = place.standing()
            if standing is not None and standing != told:
                told = standing
                yield Queued(position=standing[0], ahead=standing[1])
            if place.loading and not loading_told and place.upstream is not None:
                loading_told = True
                yield Loading(upstream=place.upstream, model=self.model)
            if opening.done():
                return
            await guard(asyncio.wait({opening}, timeout=QUEUE_TICK))

    # -- the end -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the upstream request, if one is open (so it stops generating), and record
        the call as cancelled if nothing else recorded it. Safe to call more than once."""
        if self._opening is None and self._held is None:
            if self.account.record is None:
                await self.gateway.finish(self.account, "cancelled", error=self.reason)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        opening = self._opening
        stream = self._stream
        if opening is not None:
            if not opening.done():
                opening.cancel()
                with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                    await opening
            if (
                stream is None
                and opening.done()
                and not opening.cancelled()
                and opening.exception() is None
            ):
                stream = opening.result()
            elif opening.done() and not opening.cancelled():
                # Retrieved: a failure reported already is not "never retrieved".
                opening.exception()
        if stream is not None:
            _tried(self.account, stream)
            with contextlib.suppress(UpstreamError, TimeoutError):
                await asyncio.wait_for(stream.aclose(), 5)
            if stream.gpu is not None:
                self.account.gpu = stream.gpu  # charged as it closed
        if self.account.gpu is None and self._tab:
            self.account.gpu = self._tab[-1]
        await self.gateway.finish(self.account, "cancelled", error=self.reason)
        held, self._held = self._held, None
        if held is not None:
            for watcher in self.gateway.watchers:
                watcher.stream_closed(self.account)
            await self.gateway.limits.close_stream(held)
