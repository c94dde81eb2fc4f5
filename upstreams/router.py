"""Several model servers behind one face: a `Router` is itself a `calls.upstream.Upstream`,
so the pipeline never knows it has more than one.

- Models: the union of every upstream's, each once, read by a health check every
  `interval` seconds and again when a call asks for a model nobody lists.
- Routing: among the upstreams that have the model and whose circuit lets calls through,
  one where the model is loaded already (a cold load costs seconds to minutes), then the
  least busy against its cap, then by weight (smooth weighted round robin, so calls spread
  in proportion and a test can tell where the next one goes).
- Caps: an upstream runs at most `cap` calls at once (configured, or else the slots an
  OpenAI-compatible server reports: llama-server's `/props` `total_slots`). A call that finds
  every upstream with its model at its cap waits here, in the fair queue (queueing.Line): at
  most `max_waiting` calls wait (then 503 `upstream_busy`), at most `per_key` of one key
  (then 429 `queue_full`), each with a Retry-After from the rate the line drains, each at
  most `wait_seconds` (the `--timeout`: nothing came from an upstream meanwhile; then 504
  `upstream_timeout`). A freed slot goes straight to the waiter the fair order names, so a
  newcomer never overtakes the line. Who asks comes with the call as a `queueing.Place`.
- Health: see breaker.py. An upstream that is down leaves the routing at once and comes
  back by itself when its health check answers again.
- Failover: a stream whose upstream fails before the first piece of its answer has reached
  the pipeline is tried once more on another upstream that has the model, never on the same
  one; after the first piece, never. A whole answer reaches nobody until it is complete, so
  any failure of one is tried once elsewhere. Records name the upstream and the tries.
- With a single upstream, a model it does not list still goes to it (it answers for itself,
  as before there were several).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec

from calls.errors import (
    CloudModelRefused,
    KeyQueueFull,
    ModelNotFound,
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    UpstreamUnreachable,
    UpstreamWrongAddress,
)
from calls.models import canonical, is_cloud
from calls.types import (
    Answer,
    CallRequest,
    Embeddings,
    EmbedRequest,
    GpuUse,
    LoadedModel,
    Metrics,
    ModelInfo,
    Piece,
)
from calls.upstream import (
    AnswerStream,
    ModelServer,
    Queued,
    UpstreamHealth,
    UpstreamResidency,
    gpu_tab,
    queued_call,
)
from queueing import Line, Place, Waiter, current
from queueing.line import Order
from queueing.place import RANK
from queueing.sharing import Shared as SharedSlots
from queueing.sharing import SharedDown
from queueing.view import ModelQueue, QueuedCall, QueueView

from .breaker import Breaker
from .config import UpstreamSpec
from .gputime import GpuClock, Lease, charge, reported
from .residency import Residency

log = logging.getLogger("ollama_host.upstreams")
T = TypeVar("T")
# A whole result: it names the upstream that gave it, and after how many tries.
W = TypeVar("W", Answer, Embeddings)

# A health check answers within this, or counts as a bad answer.
PROBE_SECONDS = 3.0
# A model nobody lists makes the router read every model list again, at most this often.
MISS_REFRESH = 1.0
# Failures that say the upstream itself is unwell (they count toward opening its circuit).
# A timeout too: no first byte within its bound, or nothing for --timeout, is a server not
# answering, and routing that keeps preferring it (its model loaded) keeps feeding it calls.
_UNWELL = (
    UpstreamUnavailable,
    UpstreamFailed,
    UpstreamBadResponse,
    UpstreamWrongAddress,
    UpstreamUnauthorized,
    UpstreamTimeout,
)
# Failures another upstream would repeat: not tried elsewhere.
_FINAL = (UpstreamRejected, CloudModelRefused)


@functools.lru_cache(maxsize=4096)
def _key(model: str) -> str:
    return canonical(model)


def _is_remote(info: ModelInfo) -> bool:
    # Ollama lists a cloud model it forwards to ollama.com with its remote host, whatever it
    # was renamed to.
    return info.remote_host is not None


class Member:
    """One upstream in the router: its server, its configuration, and what is known of it."""

    def __init__(self, spec: UpstreamSpec, upstream: ModelServer, cooldown: float) -> None:
        self.spec = spec
        self.upstream = upstream
        self.name = spec.name
        self.cap = spec.cap
        self.weight = spec.weight
        self.allowed = spec.allowed()
        self.in_flight = 0
        # The calls holding its slots now.
        self.running: set[Place] = set()
        # Where its cap came from: the configuration, or the server's own report.
        self.cap_source: str | None = None if spec.cap is None else "configured"
        self.asked_cap = False
        # Canonical name -> the model as this server lists it.
        self.models: dict[str, ModelInfo] = {}
        self.remote: set[str] = set()
        self.loaded: set[str] = set()
        self.listed = False
        self.version: str | None = None
        # What its last health check found wrong, and what its last failed call did.
        self.error: str | None = None
        self.failure: str | None = None
        self.checked: UpstreamError | None = None
        self.breaker = Breaker(cooldown, retry=min(1.0, cooldown))
        # Its models in memory, watched (residency.py).
        self.residency = Residency()
        self.next_check = 0.0
        self.current = 0.0  # smooth weighted round robin
        # Its GPUs, shared by the calls running on it (upstreams.gputime), and their price.
        self.clock = GpuClock(spec.gpus)
        self.cost = spec.cost

    def charge(self, lease: Lease, metrics: Metrics | None) -> GpuUse:
        """The GPU time of a call that ran from `lease` until now, by the upstream's own
        account in `metrics` where it gave one."""
        held, share = self.clock.stop(lease)
        return charge(reported(metrics), held, share, self.cost)

    def serves(self, key: str) -> bool:
        return key in self.models and (self.allowed is None or key in self.allowed)

    def free(self) -> bool:
        if self.breaker.state == "half-open":
            return self.in_flight == 0  # one trial at a time
        return self.cap is None or self.in_flight < self.cap

    @property
    def reachable(self) -> bool:
        """Its health check answers (its circuit may still be open for bad answers)."""
        return self.listed and self.error is None and not self.breaker.hard

    def rank(self, key: str) -> tuple[int, float]:
        return (0 if key in self.loaded else 1, self.in_flight / (self.cap or self.weight))

    def list_models(self, models: list[ModelInfo]) -> None:
        self.models = {_key(m.name): m for m in models}
        self.remote = {key for key, info in self.models.items() if _is_remote(info)}
        self.listed = True

    def health(self, waiting: int, shared: str | None = None) -> UpstreamHealth:
        closed = self.breaker.state == "closed"
        allowed = [key for key in self.models if self.allowed is None or key in self.allowed]
        return UpstreamHealth(
            name=self.name,
            kind=self.upstream.kind,
            address=self.upstream.address,
            status="up" if self.reachable else "down",
            version=self.version,
            error=self.error or (None if closed else self.failure),
            in_flight=self.in_flight,
            capacity=self.cap,
            models=sorted(self.models[key].name for key in allowed),
            circuit=self.breaker.state,
            waiting=waiting,
            loaded=sorted(
                self.models[key].name if key in self.models else key for key in self.loaded
            ),
            fairness=(
                f"on ({self.cap_source} cap)"
                if self.cap is not None
                else "off: no cap, calls are forwarded as they come"
            ),
            shared=shared,
            gpus=self.clock.gpus,
            cost=self.cost,
        )


class _NoOther(Exception):
    """No upstream left to try for this model."""


class Router:
    """Several upstreams as one `calls.upstream.Upstream`."""

    def __init__(
        self,
        members: Sequence[Member],
        *,
        interval: float = 5.0,
        allow_cloud: bool = False,
        max_waiting: int = 512,
        wait_seconds: float = 600.0,
        probe_seconds: float = PROBE_SECONDS,
        per_key: int = 256,
        order: Order = "fair",
    ) -> None:
        if not members:
            raise ValueError("a router needs at least one upstream")
        self.members = list(members)
        self.interval = interval
        self.allow_cloud = allow_cloud
        self.max_waiting = max_waiting
        self.wait_seconds = wait_seconds
        self.probe_seconds = probe_seconds
        # An upstream found down is probed this often; one that is up, every interval.
        self._retry = min(1.0, interval)
        self.line = Line(order=order, max_waiting=max_waiting, per_key=per_key)
        # Caps and the queue shared through Redis with other gateways (share()); None: local.
        self.shared: SharedSlots | None = None
        self._by_name = {m.name: m for m in self.members}
        self._monitor: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = -MISS_REFRESH
        self._checks: dict[Member, asyncio.Task[None]] = {}
        self._looked = False
        self._closed = False

    # -- the Upstream interface --------------------------------------------------------------

    async def models(self) -> list[ModelInfo]:
        await self._ready()
        if not any(m.reachable for m in self.members):
            only = self.members[0].checked
            if len(self.members) == 1 and only is not None:
                raise type(only)(only.message)  # as the one upstream said it
            down = "; ".join(f"{m.name}: {m.error or m.failure or 'failing'}" for m in self.members)
            raise UpstreamUnavailable(f"no upstream answers ({down})")
        seen: dict[str, ModelInfo] = {}
        for member in self.members:
            for key, info in member.models.items():
                if key in seen or not member.serves(key):
                    continue
                if not self.allow_cloud and (key in member.remote or is_cloud(info.name)):
                    continue
                if info.loaded is None:
                    # The server's list does not say; its loaded models (read with it) do.
                    info = msgspec.structs.replace(info, loaded=key in member.loaded)
                seen[key] = info
        return list(seen.values())

    async def loaded(self) -> list[LoadedModel]:
        await self._ready()
        up = [m for m in self.members if m.breaker.routable]
        answers = await asyncio.gather(
            *(self._probe(m.upstream.loaded()) for m in up), return_exceptions=True
        )
        seen: dict[str, LoadedModel] = {}
        for answer in answers:
            if isinstance(answer, list):
                for entry in answer:
                    seen.setdefault(_key(entry.name), entry)
        return list(seen.values())

    async def show(self, model: str) -> ModelInfo:
        self._refuse_cloud(model)
        await self._ready()
        member = self._any_with(model)
        return await member.upstream.show(self._own_name(member, model))

    async def version(self) -> str:
        await self._ready()
        for member in self.members:
            if member.breaker.routable and member.version:
                return member.version
        raise UpstreamUnavailable("no upstream answers; see /health")

    async def health(self) -> list[UpstreamHealth]:
        await self._ready()
        waiting = self.line.waiting
        shared = None if self.shared is None else self.shared.describe()
        return [m.health(sum(m in w.members for w in waiting), shared) for m in self.members]

    def share(self, shared: SharedSlots) -> None:
        """Take slots and queue calls through Redis, with every gateway that shares it."""
        self.shared = shared
        shared.watch(self._shared_caps)

    def _shared_caps(self) -> list[tuple[str, int]]:
        return [(m.name, m.cap) for m in self.members if m.cap is not None]

    def residency(self) -> list[UpstreamResidency]:
        """Each upstream's models in memory, and their loads and unloads lately."""
        return [m.residency.view(m.name) for m in self.members]

    async def answer(self, request: CallRequest) -> Answer:
        """A whole answer. Nothing of it reaches the client before it is complete, so any
        failure is tried once on another upstream."""
        return await self._whole(
            request.model,
            lambda member: member.upstream.answer(self._own(member, request)),
            _context(request.generation.options),
        )

    async def open_stream(self, request: CallRequest) -> RoutedStream:
        self._refuse_cloud(request.model)
        await self._ready()
        tried: list[Member] = []
        place = _place_of(request.model)
        member, inner, lease, cold = await self._open_on(request, tried, None, place)
        return RoutedStream(self, request, tried, member, inner, place, lease, cold)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        def ask(member: Member) -> Awaitable[Embeddings]:
            own = self._own_name(member, request.model)
            if own == request.model:
                return member.upstream.embed(request)
            return member.upstream.embed(msgspec.structs.replace(request, model=own))

        return await self._whole(request.model, ask, _context(request.options))

    async def _whole(
        self, model: str, ask: Callable[[Member], Awaitable[W]], context: int | None
    ) -> W:
        """What `ask` gets of an upstream that has the model, tried once more on another
        upstream if it fails: a whole result reaches nobody before it is complete."""
        self._refuse_cloud(model)
        await self._ready()
        tried: list[Member] = []
        failure: UpstreamError | None = None
        place = _place_of(model)
        while True:
            member = await self._next(model, tried, failure, place)
            lease = member.clock.start()
            cold = _cold(member, model, context)
            try:
                result = await ask(member)
            except UpstreamError as exc:
                exc.gpu = member.charge(lease, None)
                self._failed(member, exc, model)
                failure = exc
                continue
            except BaseException:
                # Cancelled: the GPU worked all the same, and the call is charged for it.
                use = member.charge(lease, None)
                if (tab := gpu_tab.get()) is not None:
                    tab.append(use)
                raise
            finally:
                self._release(member, place)
            self._succeeded(member, _key(model))
            if cold is not None:
                await self._loaded(cold)
            result.upstream, result.attempts = member.name, len(tried)
            if isinstance(result, Answer):
                result.metrics.gpu = member.charge(lease, result.metrics)
            else:
                own = Metrics(upstream_seconds=result.upstream_seconds)
                result.gpu = member.charge(lease, own)
            return result

    async def aclose(self) -> None:
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for task in list(self._checks.values()):
            task.cancel()
        for waiter in self.line.waiting:
            if not waiter.future.done():
                waiter.future.set_exception(UpstreamUnavailable("the gateway is stopping"))
        if self.shared is not None:
            await self.shared.aclose()
        await asyncio.gather(*(m.upstream.aclose() for m in self.members), return_exceptions=True)

    async def queue(self) -> QueueView:
        """Per upstream and model: the calls running, and those waiting in fair order (of
        every gateway, when they share Redis)."""
        if self.shared is not None and self.shared.usable:
            with contextlib.suppress(SharedDown):
                return await self._shared_queue(self.shared)
        return self._local_queue()

    async def _shared_queue(self, shared: SharedSlots) -> QueueView:
        capped = self._shared_caps()
        found = await shared.view([name for name, _ in capped])
        caps = dict(capped)
        groups: dict[tuple[str, str], ModelQueue] = {}
        for name, running, waiting, _ in found:
            for kind, entries in (("running", running), ("waiting", waiting)):
                for position, entry in enumerate(entries, 1):
                    fields = entry.split("\x1f") + [""] * 6
                    label, project, priority, since, model, granted = fields[:6]
                    group = groups.get((name, model))
                    if group is None:
                        group = groups[(name, model)] = ModelQueue(
                            upstream=name, model=model, cap=caps.get(name), running=[], waiting=[]
                        )
                    # Wall clocks: the asking gateway's, and Redis's at the grant.
                    asked_at = float(since or 0)
                    granted_at = float(granted) / 1000 if granted else None
                    end = granted_at if granted_at is not None else time.time()
                    call = QueuedCall(
                        key_label=label or None,
                        project=project or None,
                        priority=priority or "interactive",
                        waited_seconds=round(max(0.0, end - asked_at), 3),
                        running_seconds=(
                            None
                            if granted_at is None
                            else round(max(0.0, time.time() - granted_at), 3)
                        ),
                        position=position if kind == "waiting" else None,
                    )
                    (group.running if kind == "running" else group.waiting).append(call)
        return QueueView(
            order=self.line.order,
            shared=shared.describe(),
            queues=sorted(groups.values(), key=lambda q: (q.upstream, q.model)),
        )

    def _local_queue(self) -> QueueView:
        moment = time.monotonic()
        groups: dict[tuple[str, str], ModelQueue] = {}

        def group(member: Member, model: str) -> ModelQueue:
            found = groups.get((member.name, model))
            if found is None:
                found = groups[(member.name, model)] = ModelQueue(
                    upstream=member.name, model=model, cap=member.cap, running=[], waiting=[]
                )
            return found

        for member in self.members:
            for place in sorted(member.running, key=lambda p: p.granted or 0.0):
                group(member, place.model).running.append(QueuedCall.of(place, moment))
        for position, waiter in enumerate(self.line.ranked(), 1):
            for member in self.members:
                if member in waiter.members:
                    entry = QueuedCall.of(waiter.place, moment, position)
                    group(member, waiter.place.model).waiting.append(entry)
        return QueueView(
            order=self.line.order,
            shared="local" if self.shared is None else self.shared.describe(),
            queues=sorted(groups.values(), key=lambda q: (q.upstream, q.model)),
        )

    # -- routing ------------------------------------------------------------------------------

    def _refuse_cloud(self, model: str) -> None:
        if not self.allow_cloud and is_cloud(model):
            raise CloudModelRefused(_cloud_message(model))

    async def _open_on(
        self,
        request: CallRequest,
        tried: list[Member],
        failure: UpstreamError | None,
        place: Place,
    ) -> tuple[Member, AnswerStream, Lease, _Cold | None]:
        """A stream opened on an upstream not tried yet (after `failure`, if one came), its
        lease on that upstream's GPU clock, which starts when the slot is granted, and the
        model load it makes, if it makes one."""
        while True:
            member = await self._next(request.model, tried, failure, place)
            lease = member.clock.start()
            try:
                cold = _cold(member, request.model, _context(request.generation.options))
                opened = await member.upstream.open_stream(self._own(member, request))
            except UpstreamError as exc:
                exc.gpu = member.charge(lease, None)
                self._failed(member, exc, request.model)
                self._release(member, place)
                failure = exc
            except BaseException:
                use = member.charge(lease, None)
                if (tab := gpu_tab.get()) is not None:
                    tab.append(use)
                self._release(member, place)
                raise
            else:
                return member, opened, lease, cold

    async def _next(
        self, model: str, tried: list[Member], failure: UpstreamError | None, place: Place
    ) -> Member:
        """The upstream to ask now, its slot taken and it added to `tried`; after a failure,
        another one, or the failure itself (naming where it happened) if none may be tried."""
        if failure is not None:
            if len(tried) >= 2 or isinstance(failure, _FINAL):
                raise _named(failure, tried)
            try:
                member = await self._acquire(model, tried, place)
            except (_NoOther, UpstreamError):
                raise _named(failure, tried) from None
            log.info(
                "%s failed before answering (%s); asking %s",
                tried[-1].name,
                failure.code,
                member.name,
            )
        else:
            try:
                member = await self._acquire(model, tried, place)
            except _NoOther:
                await self._refresh(miss=True)
                try:
                    member = await self._acquire(model, tried, place)
                except _NoOther:
                    names = ", ".join(m.name for m in self.members)
                    raise ModelNotFound(
                        f"no upstream has the model {model!r} (asked: {names})"
                    ) from None
        tried.append(member)
        return member

    def _candidates(self, key: str, tried: list[Member]) -> list[Member]:
        """The routable upstreams that have the model (all that have it, if none is
        routable); _NoOther if none has it."""
        # Plain loops, not comprehensions and any(): every call comes through here, and in
        # this Python each comprehension is a function call of its own.
        have: list[Member] = []
        for m in self.members:
            if m not in tried and m.serves(key):
                have.append(m)
        if not have:
            only = self.members[0]
            if (
                len(self.members) == 1
                and not tried
                and (only.allowed is None or key in only.allowed)
            ):
                have = [only]  # one upstream: it answers for itself
            else:
                raise _NoOther
        # A circuit takes an upstream out of the choice while another can answer; with
        # nowhere else to go, the call is tried anyway, as if there were no breaker: the
        # server may be back before its next probe, and failing at once helps no one.
        routable: list[Member] = []
        for m in have:
            if not self.allow_cloud and key in m.remote:
                raise CloudModelRefused(_cloud_message(key))
            if m.breaker.routable:
                routable.append(m)
        return routable or have

    def _choose(self, key: str, up: list[Member]) -> Member | None:
        free: list[Member] = []
        for m in up:
            if m.free():
                free.append(m)
        if not free:
            return None
        if len(free) == 1:
            return free[0]
        best = min(m.rank(key) for m in free)
        tied = [m for m in free if m.rank(key) == best]
        if len(tied) == 1:
            return tied[0]
        total = 0.0
        for m in tied:
            m.current += m.weight
            total += m.weight
        pick = max(tied, key=lambda m: m.current)  # the first of equals, in configured order
        pick.current -= total
        return pick

    async def _acquire(self, model: str, tried: list[Member], place: Place) -> Member:
        """Take a slot on the best upstream for the model, waiting in the fair queue while
        every one that has it is at its cap."""
        key = _key(model)
        loop = asyncio.get_running_loop()
        line = self.line
        deadline: float | None = None
        place.enqueued = place.granted = None
        shared = self.shared
        if shared is not None and shared.usable:
            up = self._candidates(key, tried)
            if all(m.cap is not None for m in up):
                deadline = loop.time() + self.wait_seconds
                member = await self._acquire_shared(shared, key, up, place, deadline, model)
                if member is not None:
                    return member
                # Redis went away: on in the local line, with the time left.
        while True:
            up = self._candidates(key, tried)
            member = self._choose(key, up)
            if member is not None:
                member.in_flight += 1
                self._grant(member, place, handed=False)
                return member
            if deadline is None:
                self._admit(line, place, up, model)
                deadline = loop.time() + self.wait_seconds
            waiter = Waiter(frozenset(up), loop.create_future(), place)
            line.join(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter.future
            except BaseException as exc:
                # A slot handed over just as this call gave up goes on to the next in line.
                future = waiter.future
                handed_over = (
                    future.done() and not future.cancelled() and future.exception() is None
                )
                if handed_over and isinstance(got := future.result(), Member):
                    self._release(got, place)
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeout(
                        f"no upstream with {model!r} had a free slot within "
                        f"{self.wait_seconds:g} s (--timeout)"
                    ) from None
                raise
            finally:
                line.leave(waiter)
            if isinstance(handed, Member):
                return handed  # its slot came with it
            # Woken to look again: an upstream came back, or the models changed.

    async def _acquire_shared(
        self,
        shared: SharedSlots,
        key: str,
        up: list[Member],
        place: Place,
        deadline: float,
        model: str,
    ) -> Member | None:
        """A slot through Redis (queueing.shared), waiting in the shared fair queue; None if
        Redis cannot be asked (the local line takes over)."""
        ordered = sorted(up, key=lambda m: m.rank(key))
        ups = [(m.name, m.cap or 1) for m in ordered]
        waiting = shared.waiting_count()
        if waiting >= self.line.max_waiting:
            raise self._busy(model, waiting, sum(cap for _, cap in ups))
        call_id = shared.new_id()
        cost = self.line.cost
        try:
            got = await shared.take(call_id, place, ups, cost=cost, order=self.line.order)
        except SharedDown:
            return None
        if got is None:
            place.enqueued = time.monotonic()
            place.line = shared.standing_of(call_id)
            try:
                async with asyncio.timeout_at(deadline):
                    got = await shared.wait(call_id)
            except BaseException as exc:
                place.line = None
                shared.cancel_soon(call_id)
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeout(
                        f"no upstream with {model!r} had a free slot within "
                        f"{self.wait_seconds:g} s (--timeout)"
                    ) from None
                raise
            place.line = None
            if got is None:
                return None
        member = self._by_name.get(got)
        if member is None:
            # Another gateway's upstream of that name, unknown here: configurations differ.
            shared.release(call_id, got, rank=0, tenant="", correction=0.0)
            return None
        member.in_flight += 1
        member.running.add(place)
        place.capped = True
        place.lease = (call_id, got)
        place.charged = cost
        place.held_from = time.monotonic()
        place.grant(member.name, loading=_key(place.model) not in member.loaded)
        return member

    def _admit(self, line: Line, place: Place, up: list[Member], model: str) -> None:
        """Refuse a call the line has no room for, saying when to try again."""
        full = line.full(place)
        if full is None:
            return
        slots = sum(m.cap or 1 for m in up)
        if full == "line":
            raise self._busy(model, len(line.waiting), slots)
        mine = KeyQueueFull(
            f"{line.per_key} calls of yours wait already for {model!r} (--queue-per-key); "
            "try again when some have been served"
        )
        mine.retry_after = line.retry_after(line.tenant_waiting(place.tenant), slots)
        raise mine

    def _busy(self, model: str, waiting: int, slots: int) -> UpstreamBusy:
        """The refusal of a call the line (local or shared) is too long for: Retry-After is
        when `waiting` calls will have gone through `slots` slots."""
        busy = UpstreamBusy(
            f"every upstream with {model!r} is at its cap and {self.line.max_waiting} "
            "calls wait already (--upstream-queue); try again shortly"
        )
        busy.retry_after = self.line.retry_after(waiting, slots)
        return busy

    def _grant(self, member: Member, place: Place, *, handed: bool) -> None:
        if member.cap is not None:
            # Shares and the queue view matter only where calls can wait: not without a cap.
            member.running.add(place)
            self.line.charge(place, handed=handed)
            place.capped = True
        place.grant(member.name, loading=_key(place.model) not in member.loaded)

    def _release(self, member: Member, place: Place) -> None:
        """Give back a slot: to the waiter the fair order names, else to the upstream."""
        if place.lease is not None and self.shared is not None:
            call_id, name = place.lease
            place.lease = None
            member.running.discard(place)
            held = self.line.learn(place)
            self.shared.release(
                call_id,
                name,
                rank=RANK[place.priority],
                tenant=place.tenant,
                correction=(held - place.charged) / place.weight,
            )
            member.in_flight -= 1
            self._hand_local(member)
            return
        if place in member.running:
            member.running.discard(place)
            self.line.release(place)
        if self.line.waiting and member.breaker.routable:
            waiter = self.line.next_for(member)
            if waiter is not None:
                self._grant(member, waiter.place, handed=True)
                waiter.future.set_result(member)  # the slot passes on, still taken
                return
        member.in_flight -= 1
        if not member.breaker.routable:
            self._wake_all()

    def _hand_local(self, member: Member) -> None:
        """A slot freed outside the local line (a shared one): to a local waiter, if any
        waits (only while Redis was away)."""
        if self.line.waiting and member.breaker.routable and member.free():
            waiter = self.line.next_for(member)
            if waiter is not None:
                member.in_flight += 1
                self._grant(member, waiter.place, handed=True)
                waiter.future.set_result(member)

    def _wake_all(self) -> None:
        for waiter in self.line.waiting:
            if not waiter.future.done():
                waiter.future.set_result(None)

    def _own(self, member: Member, request: CallRequest) -> CallRequest:
        own = self._own_name(member, request.model)
        return request if own == request.model else msgspec.structs.replace(request, model=own)

    def _own_name(self, member: Member, model: str) -> str:
        if not member.upstream.exact_model_names:
            return model
        info = member.models.get(_key(model))
        return info.name if info is not None else model

    def _any_with(self, model: str) -> Member:
        try:
            return self._candidates(_key(model), [])[0]
        except _NoOther:
            raise ModelNotFound(f"no upstream has the model {model!r}") from None

    # -- health -------------------------------------------------------------------------------

    def _succeeded(self, member: Member, key: str) -> None:
        member.loaded.add(key)
        # It answered: whatever its last health check could not reach, it is reachable now.
        member.error = member.checked = None
        if member.breaker.state != "closed" or member.breaker.failures:
            was = member.breaker.state
            member.breaker.success()
            if was != "closed":
                log.info("upstream %s answers again; its circuit is closed", member.name)

    def _failed(self, member: Member, exc: UpstreamError, model: str) -> None:
        if isinstance(exc, ModelNotFound):
            # Its list was out of date: not there until a health check lists it again.
            member.models.pop(_key(model), None)
            return
        if not isinstance(exc, _UNWELL):
            return
        was = member.breaker.state
        member.breaker.failure(_now(), hard=isinstance(exc, UpstreamUnreachable))
        member.failure = exc.message
        if isinstance(exc, UpstreamUnavailable | UpstreamTimeout) and (
            member.breaker.state != "open"
        ):
            # A connection broke, or a call got no answer: one connection or call, or the
            # whole server? A check tells at once (a server that is gone refuses it, a hung
            # one lets it time out), rather than the next call finding out.
            self._check_soon(member)
        if member.breaker.state == "open" and was != "open":
            log.warning(
                "upstream %s leaves the routing (%s): %s", member.name, exc.code, exc.message
            )
            self._wake_all()

    async def _loaded(self, cold: _Cold) -> None:
        """After a call that made its upstream load the model: read what the server holds
        now, and note on the call which models the load unloaded (the model itself, when it
        was reloaded for another context)."""
        member = cold.member
        try:
            entries = await self._probe(member.upstream.loaded())
        except (UpstreamError, TimeoutError):
            return
        member.loaded = {_key(e.name) for e in entries}
        residency = member.residency
        residency.see(entries)
        now = residency.models
        gone = [name for key, (name, _) in cold.before.items() if key not in now]
        held = cold.before.get(cold.key)
        if held is not None and cold.key in now and now[cold.key][1] != held[1]:
            gone.append(held[0])
        cold.call.evicted = ", ".join(sorted(gone)) or None

    async def _ready(self) -> None:
        """Start the health checks, and wait for the first reading of the model lists."""
        if self._monitor is None and not self._closed:
            self._monitor = asyncio.ensure_future(self._watch())
            self._monitor.add_done_callback(_monitor_ended)
        if not self._looked:
            await self._refresh()
            self._looked = True

    def _check_soon(self, member: Member) -> None:
        if member not in self._checks and not self._closed:
            task = asyncio.ensure_future(self._check(member))
            self._checks[member] = task
            task.add_done_callback(lambda _: self._checks.pop(member, None))

    async def _refresh(self, *, miss: bool = False) -> None:
        """Read every routable upstream's models again (one reading at a time, shared by
        every caller); for a miss, at most every MISS_REFRESH seconds."""
        if miss and _now() - self._refreshed_at < MISS_REFRESH:
            return
        if self._refreshing is None or self._refreshing.done():
            members = [m for m in self.members if m.breaker.state != "open" or not m.listed]
            self._refreshing = asyncio.ensure_future(self._check_all(members))
        await asyncio.shield(self._refreshing)

    async def _check_all(self, members: list[Member]) -> None:
        await asyncio.gather(*(self._check(m) for m in members))
        self._refreshed_at = _now()
        self._wake_all()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._retry)
            now = _now()
            due = [
                m
                for m in self.members
                if m.breaker.due(now) or (m.breaker.state != "open" and now >= m.next_check)
            ]
            if due:
                await asyncio.gather(*(self._check(m) for m in due))

    async def _probe(self, work: Awaitable[T]) -> T:
        async with asyncio.timeout(self.probe_seconds):
            return await work

    async def _check(self, member: Member) -> None:
        """The health check: the upstream's models, which are loaded, and its version."""
        upstream = member.upstream
        hard = False
        error: str | None
        try:
            models = await self._probe(upstream.models())
        except UpstreamError as exc:
            # A check that cannot complete its small GET at the connection level (refused,
            # or taken and reset, as by a server that is dying) finds the server not
            # serving: down, so it comes back on the first check that answers. A call's
            # broken connection may be one connection; a check's says more.
            # One that timed out (its first-byte bound, shorter than probe_seconds) is a
            # server not answering, as below.
            ok, error = False, exc.message
            hard = isinstance(exc, UpstreamUnavailable | UpstreamTimeout)
            member.checked = exc
        except TimeoutError:
            # A list of models in more than probe_seconds is a server not answering: hung
            # (it takes connections and answers nothing), or too busy to take another call.
            # Out of the routing at once, as if it could not be reached, and back as soon as
            # a check answers (every second): calls go elsewhere meanwhile, instead of each
            # waiting for its first-byte bound there. (Alone, it is still tried.)
            ok, hard = False, True
            error = f"{upstream.address} did not answer within {self.probe_seconds:g} s"
            member.checked = UpstreamTimeout(error)
        else:
            ok, error = True, None
            member.checked = None
            member.list_models(models)
            # Which models are loaded, and the version: nice to know, not a health matter.
            with contextlib.suppress(UpstreamError, TimeoutError):
                entries = await self._probe(upstream.loaded())
                member.loaded = {_key(e.name) for e in entries}
                member.residency.see(entries)
            if member.version is None:
                with contextlib.suppress(UpstreamError, TimeoutError):
                    member.version = await self._probe(upstream.version())
            if member.cap is None and not member.asked_cap:
                # Read once: a server's slots are fixed at its start.
                with contextlib.suppress(UpstreamError, TimeoutError):
                    member.cap = await self._probe(upstream.capacity())
                    member.asked_cap = True
                    if member.cap is not None:
                        member.cap_source = "server"
                        log.info("upstream %s runs %d calls at once", member.name, member.cap)
        now = _now()
        member.next_check = now + self.interval
        member.error = error
        breaker = member.breaker
        was = breaker.state
        if was == "closed":
            if not ok:
                breaker.failure(now, hard=hard)
        else:
            breaker.probed(now, ok=ok, hard=hard)
        if breaker.state != was:
            if breaker.state == "open":
                log.warning("upstream %s leaves the routing: %s", member.name, error)
            else:
                log.info("upstream %s is back (%s)", member.name, breaker.state)
            self._wake_all()


def _context(options: dict[str, object] | None) -> int | None:
    """The context a call asks for (Ollama's num_ctx), if it names one."""
    value = options.get("num_ctx") if options else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Cold:
    """A call that makes its upstream load its model: what was loaded before it."""

    __slots__ = ("before", "call", "key", "member")

    def __init__(self, call: Queued, member: Member, key: str) -> None:
        self.call = call
        self.member = member
        self.key = key
        self.before = dict(member.residency.models)


def _cold(member: Member, model: str, context: int | None) -> _Cold | None:
    """Note on the current call whether `member` will load its model for it (unknown until
    its loaded models were read once); the load to watch for, if it will."""
    call = queued_call.get()
    residency = member.residency
    if call is None or not residency.seen:
        return None
    key = _key(model)
    call.cold_start = residency.cold(key, context)
    return _Cold(call, member, key) if call.cold_start else None


def _now() -> float:
    return asyncio.get_running_loop().time()


def _place_of(model: str) -> Place:
    """Who asks, as the pipeline said (queueing.current); a call made without it (a test,
    a tool) waits as one anonymous tenant."""
    place = current.get()
    if place is None:
        place = Place(tenant="", model=model)
    elif not place.model:
        place.model = model
    return place


def _monitor_ended(task: asyncio.Task[None]) -> None:
    # The health checks only stop with the router; anything else is a bug, told loudly,
    # since without them an upstream that went down would never come back.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the upstream health checks stopped", exc_info=exc)


def _cloud_message(model: str) -> str:
    return (
        f"{model!r} is a cloud model: Ollama would run it on ollama.com under the server's "
        "account. The gateway refuses cloud models unless started with --allow-cloud"
    )


def _named(failure: UpstreamError, tried: list[Member]) -> UpstreamError:
    """The failure, naming the upstream it came from and how many were tried."""
    failure.upstream = tried[-1].name if tried else None
    failure.attempts = len(tried)
    return failure


class RoutedStream:
    """A stream through the router (`calls.upstream.AnswerStream`): holds its upstream's slot
    until it ends or is closed, and fails over once if its upstream fails before the first
    piece."""

    def __init__(
        self,
        router: Router,
        request: CallRequest,
        tried: list[Member],
        member: Member,
        inner: AnswerStream,
        place: Place,
        lease: Lease,
        cold: _Cold | None = None,
    ) -> None:
        self._router = router
        self._place = place
        # A load this stream made: watched once its first piece came (the load is over).
        self._cold = cold
        self._watching: asyncio.Future[None] | None = None
        self._request = request
        self._tried = tried
        self._member = member
        self._inner = inner
        self._held: Member | None = member
        self._lease = lease
        self.upstream: str | None = member.name
        self.attempts = len(tried)
        self.metrics: Metrics | None = None
        # Only the try that answers is charged to the call (the record names its upstream);
        # a try that failed before the first piece is charged to nobody.
        self.gpu: GpuUse | None = None

    async def batches(self) -> AsyncIterator[list[Piece]]:
        router = self._router
        while True:
            pieces = self._inner.batches()
            try:
                first = await anext(pieces)
            except StopAsyncIteration:
                break  # an answer with nothing in it
            except UpstreamError as exc:
                # Nothing has reached the pipeline yet: once more, elsewhere.
                router._failed(self._member, exc, self._request.model)
                await self._let_go()
                self._member, self._inner, self._lease, self._cold = await router._open_on(
                    self._request, self._tried, exc, self._place
                )
                self._held = self._member
                self.upstream, self.attempts = self._member.name, len(self._tried)
                continue
            router._succeeded(self._member, _key(self._request.model))
            if self._cold is not None:
                self._watching = asyncio.ensure_future(router._loaded(self._cold))
            yield first
            # Not held for the rest of the stream: a read can bring hundreds of KB.
            del first
            try:
                async for batch in pieces:
                    yield batch
            except UpstreamError as exc:
                router._failed(self._member, exc, self._request.model)
                _named(exc, self._tried)
                with contextlib.suppress(UpstreamError):
                    await self._let_go()
                exc.gpu = self.gpu
                raise
            break
        self.metrics = self._inner.metrics
        watching = self._watching
        if watching is not None and not watching.done():
            # What the load unloaded, for the record: a moment more at most.
            await asyncio.wait({watching}, timeout=router.probe_seconds)
        await self._let_go()
        if self.metrics is not None:
            self.metrics.gpu = self.gpu

    async def _let_go(self) -> None:
        held, self._held = self._held, None
        try:
            await self._inner.aclose()
        finally:
            if held is not None:
                # The inner stream's final account, if it ended with one: a stream closed
                # early is charged its share of the time it held the slot.
                self.gpu = held.charge(self._lease, self._inner.metrics)
                self._router._release(held, self._place)

    async def aclose(self) -> None:
        watching = self._watching
        if watching is not None and not watching.done():
            watching.cancel()
        await self._let_go()
