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
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import msgspec

import keys
import requestlog
from errors import ApiError, api_error, error_body
from keys import ADMIN, ANYONE, Access, ApiKey
from limits import Concurrent, PerDay, PerMinute
from ollama_client import ChatStream, Message, Metrics, OllamaClient, OllamaError, Piece
from schemas import AskRequest, StartEvent, TokenEvent, Usage
from settings import Settings
from store import InputMessage, Status, UsageRecord, UsageStore, iso, new_id

log = logging.getLogger("ollama_host.calls")
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode


def messages_of(req: AskRequest) -> list[Message]:
    messages = [Message("system", req.template)] if req.template else []
    messages.append(Message("user", req.content))
    return messages


class Caller(msgspec.Struct, frozen=True):
    """Who is asking: a key's holder, the admin (the page's playground), or anyone."""

    key: ApiKey | None = None
    admin: bool = False
    # A fingerprint of the credential presented, for the record.
    fingerprint: str | None = None


class Credentials(msgspec.Struct, frozen=True):
    """What a request brought to prove who it is; the routes fill it in."""

    bearer: str | None = None
    session: str | None = None
    ticket: str | None = None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def shutdown_error(call_id: str) -> ApiError:
    return ApiError(
        503,
        "server_shutdown",
        "the gateway is shutting down and could not finish this answer in time; "
        "ask again in a moment",
        headers={"Retry-After": "5"},
        request_id=call_id,
    )


def _internal(call_id: str) -> ApiError:
    return ApiError(
        500, "internal_error", "the gateway failed unexpectedly; see its log", request_id=call_id
    )


class ShuttingDown(Exception):
    """The gateway is stopping and this call's grace period is over."""


class Call:
    """One ask in flight: what has come back so far, and the clock."""

    def __init__(
        self, gateway: Gateway, req: AskRequest, caller: Caller, *, streamed: bool
    ) -> None:
        self.gateway = gateway
        self.req = req
        self.caller = caller
        self.streamed = streamed
        # Inside a request, the call takes the request's id: header, log and record agree.
        self.request = requestlog.current.get()
        self.id = self.request.id if self.request else new_id()
        self.date = iso(datetime.now(UTC))
        self.messages = messages_of(req)
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.pieces: list[str] = []
        self.thinking: list[str] = []
        self.record: UsageRecord | None = None
        self.answered = False

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
            user=self.caller.fingerprint
            or (keys.fingerprint(self.gateway.secret, req.user_key) if req.user_key else None),
            key_id=self.caller.key.id if self.caller.key else None,
            key_label=self.caller.key.label
            if self.caller.key
            else ("admin" if self.caller.admin else None),
        )
        self.gateway.store.append(self.record)
        self.gateway.changes += 1
        self.gateway.spend(self, self.record)
        if self.request is not None:
            self.request.record = self.record
        # The request log has the line that matters (see requestlog); this one is for debugging.
        log.debug(
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
        self, settings: Settings, ollama: OllamaClient, store: UsageStore, access: Access
    ) -> None:
        self.settings = settings
        self.ollama = ollama
        self.store = store
        self.access = access
        self.secret = access.secret
        self.per_minute = PerMinute()
        self.per_day = PerDay()
        self.streams = Concurrent()
        # Set when the server starts to stop: calls still waiting on Ollama `grace`
        # seconds later end as `server_shutdown` (see `waiting_on_ollama`).
        self.deadline: float | None = None
        self.cut = False
        self._cut_at: asyncio.TimerHandle | None = None
        # The tasks awaiting Ollama right now, and those `_cut` cancelled.
        self._waiting: set[asyncio.Task[object]] = set()
        self._cut_tasks: set[asyncio.Task[object]] = set()
        # Bumped on every record appended: the admin endpoints' ETag, so an idle
        # dashboard's polls are answered 304 without reading the store.
        self.changes = 0

    def drain(self, grace: float) -> None:
        """The server is stopping: calls in flight get `grace` more seconds, then end."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + grace
        if self._cut_at is not None:
            self._cut_at.cancel()
        self._cut_at = loop.call_at(self.deadline, self._cut)

    def _cut(self) -> None:
        # One timer for the whole gateway, not one per await: a streamed token used to
        # pay for an asyncio.timeout() of its own (5-7% of the gateway's CPU).
        self.cut = True
        for task in self._waiting:
            self._cut_tasks.add(task)
            task.cancel()

    def waiting_on_ollama(self, task: asyncio.Task[object]) -> None:
        """`task` is about to await Ollama; call `done_waiting` after, in a `finally`.

        Raises ShuttingDown if the grace period is already over. The await itself raises
        CancelledError if the period ends meanwhile: pass it to `cut_short`.
        """
        if self.cut:
            raise ShuttingDown
        self._waiting.add(task)

    def done_waiting(self, task: asyncio.Task[object]) -> None:
        self._waiting.discard(task)

    def cut_short(self, task: asyncio.Task[object]) -> bool:
        """Whether a CancelledError `task` got while waiting on Ollama was the shutdown's
        alone; if so it is taken back, and the caller raises ShuttingDown instead."""
        if task not in self._cut_tasks:
            return False
        self._cut_tasks.discard(task)
        return task.uncancel() == 0

    async def until_shutdown(self, work: Awaitable[T]) -> T:
        """Await `work`, unless the gateway is stopping and the grace period runs out first."""
        task = asyncio.current_task()
        assert task is not None
        try:
            self.waiting_on_ollama(task)
        except ShuttingDown:
            if asyncio.iscoroutine(work):
                work.close()
            raise
        try:
            return await work
        except asyncio.CancelledError:
            if self.cut_short(task):
                raise ShuttingDown from None
            raise
        finally:
            self.done_waiting(task)

    def identify(self, credentials: Credentials, user_key: str | None = None) -> Caller:
        """Who is asking, or ApiError 401. Asking needs a key once any key exists."""
        ring = self.access.keys
        if credentials.ticket is not None:
            holder = ring.redeem_ticket(credentials.ticket)
            if holder is None:
                raise _unauthorized("this stream ticket is unknown, used or expired; get a new one")
            if holder == ADMIN:
                return Caller(admin=True)
            if holder == ANYONE:
                if ring.active:
                    raise _unauthorized("asking needs an API key now; get a ticket with your key")
                return Caller()
            key = ring.get(holder)
            if key is None or key.revoked:
                raise _unauthorized("the key this ticket was issued to has been revoked")
            return Caller(key=key, fingerprint=key.fingerprint)
        admin = self.access.admin
        if credentials.session and admin.check_session(credentials.session):
            return Caller(admin=True)
        if credentials.bearer and admin.check_token(credentials.bearer):
            return Caller(admin=True)
        if not ring.active:
            return Caller()
        presented = credentials.bearer or user_key
        found = ring.verify(presented) if presented else None
        if found is None:
            raise _unauthorized(
                "this API key is not valid or has been revoked"
                if presented
                else "asking needs an API key: send `Authorization: Bearer <key>`, "
                "or the key as user_key"
            )
        return Caller(key=found, fingerprint=found.fingerprint)

    def authorize(self, req: AskRequest, credentials: Credentials) -> Caller:
        """identify(), then whether that caller may use the model asked for (403)."""
        caller = self.identify(credentials, req.user_key)
        if caller.key is not None and not caller.key.allows(req.agent):
            raise ApiError(
                403, "model_not_allowed", f"this key may not use the model {req.agent!r}"
            )
        return caller

    def ticket(self, caller: Caller) -> str:
        """A single-use ticket that lets an EventSource stream as `caller`."""
        holder = caller.key.id if caller.key else (ADMIN if caller.admin else ANYONE)
        return self.access.keys.issue_ticket(holder)

    def admit(self, req: AskRequest, caller: Caller) -> None:
        """Size and rate checks, before anything reaches Ollama (413, 429)."""
        settings = self.settings
        size = len(req.content) + len(req.template or "")
        if size > settings.max_prompt:
            raise ApiError(
                413,
                "prompt_too_large",
                f"the prompt has {size} characters; the limit is {settings.max_prompt}",
            )
        key = caller.key
        if key is not None:
            limits = key.limits
            rpm = settings.key_rpm if limits.rpm is None else limits.rpm
            per_day = (
                settings.key_tokens_per_day
                if limits.tokens_per_day is None
                else limits.tokens_per_day
            )
            self.per_day.check(f"key:{key.id}", per_day, f"the key {key.label!r}")
            self.per_minute.take(f"key:{key.id}", rpm, f"the key {key.label!r}")
        if req.project is not None:
            name = f"project:{req.project}"
            self.per_day.check(
                name, settings.project_tokens_per_day, f"the project {req.project!r}"
            )
            self.per_minute.take(name, settings.project_rpm, f"the project {req.project!r}")

    def spend(self, call: Call, record: UsageRecord) -> None:
        tokens = (record.input_tokens or 0) + (record.output_tokens or 0)
        if call.caller.key is not None:
            self.per_day.spend(f"key:{call.caller.key.id}", tokens)
        if record.project is not None:
            self.per_day.spend(f"project:{record.project}", tokens)

    async def ask(self, req: AskRequest, caller: Caller) -> Call:
        """A whole answer at once. Raises ApiError; a cancelled ask is recorded as such."""
        call = Call(self, req, caller, streamed=False)
        try:
            answer = await self.until_shutdown(self.ollama.chat(req.agent, call.messages))
            call.answered = True
        except ShuttingDown:
            error = shutdown_error(call.id)
            call.finish("cancelled", error=error)
            raise error from None
        except OllamaError as exc:
            error = api_error(exc)
            error.request_id = call.id
            call.finish("error", error=error)
            raise error from exc
        except asyncio.CancelledError:
            # The client hung up; the cancellation has already closed the upstream request.
            call.finish("cancelled")
            raise
        finally:
            if call.record is None and not call.answered:
                # Neither an answer nor a failure we know: a bug. Record the call before the
                # exception reaches the 500 handler, so no call goes unaccounted for.
                call.finish("error", error=_internal(call.id))
        # Not `add`: a whole answer has no first token to time.
        call.pieces.append(answer.content)
        if answer.thinking:
            call.thinking.append(answer.thinking)
        call.finish("ok", answer.metrics)
        return call

    def stream(self, req: AskRequest, caller: Caller) -> StreamedCall:
        """Open a streamed call, within the concurrent-stream limits (429 past them)."""
        held = ["all"]
        self.streams.enter("all", self.settings.max_streams, "the gateway")
        key = caller.key
        if key is not None:
            limit = self.settings.key_streams if key.limits.streams is None else key.limits.streams
            try:
                self.streams.enter(f"key:{key.id}", limit, f"the key {key.label!r}")
            except ApiError:
                self.streams.leave("all")
                raise
            held.append(f"key:{key.id}")

        def release() -> None:
            for name in held:
                self.streams.leave(name)

        return StreamedCall(Call(self, req, caller, streamed=True), release)


def _event(name: str, seq: int, data: msgspec.Struct) -> bytes:
    # msgspec escapes every newline inside JSON strings, so one `data:` line always suffices.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name.encode(), _encode(data))


class StreamedCall:
    """A streamed ask: opens upstream, yields SSE events, and is always closed."""

    def __init__(self, call: Call, release: Callable[[], None]) -> None:
        self.call = call
        self.id = call.id
        # Gives back this stream's places under the concurrency limits, once.
        self._release: Callable[[], None] | None = release
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
        gateway = call.gateway
        yield _event("start", 0, StartEvent(call.id, call.req.agent))
        seq = 0
        try:
            # Not `await self._opening`: a cancelled awaiter cancels the task it awaits,
            # and anyio re-delivers its cancellation on every loop turn, which would
            # break httpcore's shielded close and leave the upstream connection open.
            await gateway.until_shutdown(asyncio.wait({self._opening}))
            self._stream = stream = self._opening.result()
            batches = stream.batches()
            task = asyncio.current_task()
            assert task is not None
            while True:
                # until_shutdown's steps, without its coroutine: this runs per upstream read.
                gateway.waiting_on_ollama(task)
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if gateway.cut_short(task):
                        raise ShuttingDown from None
                    raise
                finally:
                    gateway.done_waiting(task)
                # Every token that one read brought goes out in one write: when the
                # gateway falls behind, it catches up in fewer, larger sends.
                events = []
                for piece in batch:
                    call.add(piece)
                    seq += 1
                    events.append(_event("token", seq, TokenEvent(piece.content, piece.thinking)))
                yield b"".join(events)  # one event: the same bytes object, not a copy
            record = call.finish("ok", stream.metrics)
            yield _event("done", seq + 1, Usage.of(record))
        except ShuttingDown:
            # The last word before the server goes: the same error shape as any other.
            error = shutdown_error(call.id)
            call.finish("cancelled", error=error)
            yield _event("error", seq + 1, error_body(error))
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
        release, self._release = self._release, None
        if release is not None:
            release()
