"""The router's choices, caps, failover and circuit breaker, with scripted upstreams in this
process (the same behaviours end to end, over HTTP: tests/test_upstreams.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from calls.errors import (
    CloudModelRefused,
    ModelNotFound,
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from calls.types import (
    Answer,
    CallRequest,
    Embeddings,
    EmbedRequest,
    GpuUse,
    LoadedModel,
    Message,
    Metrics,
    ModelInfo,
    Piece,
)
from calls.upstream import UpstreamHealth
from upstreams.config import UpstreamSpec
from upstreams.router import Member, Router

pytestmark = pytest.mark.anyio


class FakeStream:
    def __init__(self, server: Fake, pieces: list[str], fail_at: int | None) -> None:
        self.server = server
        self.pieces = pieces
        self.fail_at = fail_at
        self.upstream: str | None = server.name
        self.attempts = 1
        self.metrics: Metrics | None = None
        self.gpu: GpuUse | None = None
        self.closed = False

    async def batches(self) -> AsyncIterator[list[Piece]]:
        for i, text in enumerate(self.pieces):
            if i == self.fail_at:
                raise self.server.fail_with(f"{self.server.name} failed after {i} pieces")
            if self.server.hold is not None:
                await self.server.hold.wait()
            yield [Piece(text)]
        self.metrics = Metrics(output_tokens=len(self.pieces))

    async def aclose(self) -> None:
        self.closed = True


class Fake:
    """A scripted upstream: its models, what is loaded, and how its next calls go."""

    kind = "fake"
    exact_model_names = False

    def __init__(self, name: str, models: list[str], loaded: list[str] | None = None) -> None:
        self.name = name
        self.address = f"http://{name}.test"
        self.listing = [ModelInfo(name=m) for m in models]
        self.loaded_now = loaded or []
        self.down = False
        # Its checks' connections are taken and then reset (a server dying).
        self.reset = False
        self.calls: list[str] = []
        # Raised by the next open_stream calls, one each.
        self.refuse: list[UpstreamError] = []
        # The next streams fail at this piece (0: before any), with this.
        self.fail_at: int | None = None
        self.fail_with: type[UpstreamError] = UpstreamFailed
        # While set and not yet set, streams wait before each piece (they hold their slot).
        self.hold: asyncio.Event | None = None
        # Seconds its model list takes (a busy server).
        self.slow = 0.0
        # The slots it reports (llama-server's total_slots); None: it does not say.
        self.slots: int | None = None

    def _check(self) -> None:
        if self.down:
            raise UpstreamUnreachable(f"cannot reach {self.address}")
        if self.reset:
            raise UpstreamUnavailable(f"the connection to {self.address} failed: reset by peer")

    async def models(self) -> list[ModelInfo]:
        self._check()
        await asyncio.sleep(self.slow)
        return self.listing

    async def loaded(self) -> list[LoadedModel]:
        self._check()
        return [LoadedModel(name=m) for m in self.loaded_now]

    async def show(self, model: str) -> ModelInfo:
        return ModelInfo(name=model)

    async def version(self) -> str:
        return "1.0"

    async def capacity(self) -> int | None:
        return self.slots

    async def health(self) -> list[UpstreamHealth]:
        return []

    async def answer(self, request: CallRequest) -> Answer:
        stream = await self.open_stream(request)
        content = "".join([p.content async for batch in stream.batches() for p in batch])
        assert stream.metrics is not None
        return Answer(content=content, metrics=stream.metrics, upstream=self.name)

    async def open_stream(self, request: CallRequest) -> FakeStream:
        self.calls.append(request.model)
        self._check()
        if self.refuse:
            raise self.refuse.pop(0)
        return FakeStream(self, ["a ", "b "], self.fail_at)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        self.calls.append(request.model)
        self._check()
        if self.refuse:
            raise self.refuse.pop(0)
        return Embeddings(vectors=[[1.0]] * len(request.input), upstream=self.name)

    async def aclose(self) -> None:
        pass


def router(*fakes: Fake, caps: dict[str, int] | None = None, **options: Any) -> Router:
    caps = caps or {}
    weights: dict[str, float] = options.pop("weights", {})
    members = [
        Member(
            UpstreamSpec(
                name=f.name, url=f.address, cap=caps.get(f.name), weight=weights.get(f.name, 1.0)
            ),
            f,
            options.get("interval", 5.0),
        )
        for f in fakes
    ]
    return Router(members, **options)


def ask(model: str = "llama3") -> CallRequest:
    return CallRequest(model=model, messages=[Message("user", "hi")])


async def eventually(condition: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.01)


async def test_models_are_the_union_each_once() -> None:
    a = Fake("a", ["llama3", "qwen"])
    b = Fake("b", ["llama3:latest", "mistral"])
    c = Fake("c", ["phi3"])

    names = [m.name for m in await router(a, b, c).models()]

    assert names == ["llama3", "qwen", "mistral", "phi3"]


async def test_a_call_goes_where_its_model_is_loaded() -> None:
    a, b = Fake("a", ["llama3"]), Fake("b", ["llama3"], loaded=["llama3:latest"])
    routed = router(a, b)

    answers = [await routed.answer(ask()) for _ in range(3)]

    assert [x.upstream for x in answers] == ["b", "b", "b"]
    assert a.calls == []


async def test_then_the_least_busy_against_its_cap() -> None:
    a = Fake("a", ["llama3"], loaded=["llama3"])
    b = Fake("b", ["llama3"], loaded=["llama3"])
    a.hold = asyncio.Event()
    routed = router(a, b, caps={"a": 4, "b": 2})
    held = await routed.open_stream(ask())  # on a (first of equals): a 1/4, b 0/2

    second = await routed.open_stream(ask())  # b: 0/2 is less busy than 1/4
    third = await routed.open_stream(ask())  # a: 1/4 against b's 1/2

    assert (held.upstream, second.upstream, third.upstream) == ("a", "b", "a")
    for stream in (held, second, third):
        await stream.aclose()


async def test_then_the_weights() -> None:
    a = Fake("a", ["llama3"], loaded=["llama3"])
    b = Fake("b", ["llama3"], loaded=["llama3"])
    routed = router(a, b, weights={"a": 3, "b": 1})

    served = [(await routed.answer(ask())).upstream for _ in range(8)]

    assert served.count("a") == 6
    assert served.count("b") == 2


async def test_a_busy_upstreams_cap_makes_calls_wait_not_fail() -> None:
    a = Fake("a", ["llama3"])
    a.hold = asyncio.Event()
    routed = router(a, caps={"a": 1})
    first = await routed.open_stream(ask())
    second = asyncio.ensure_future(routed.answer(ask()))

    async def waiting() -> bool:
        return (await routed.health())[0].waiting == 1

    await eventually(waiting)
    assert not second.done()
    a.hold.set()
    await first.aclose()
    answer = await second

    assert answer.content == "a b "
    assert (await routed.health())[0].in_flight == 0


async def test_the_line_is_bounded_and_so_is_the_wait() -> None:
    a = Fake("a", ["llama3"])
    a.hold = asyncio.Event()
    routed = router(a, caps={"a": 1}, max_waiting=1, wait_seconds=0.2)
    first = await routed.open_stream(ask())
    waiter = asyncio.ensure_future(routed.answer(ask()))

    async def waiting() -> bool:
        return (await routed.health())[0].waiting == 1

    await eventually(waiting)
    with pytest.raises(UpstreamBusy, match="--upstream-queue"):
        await routed.answer(ask())
    with pytest.raises(UpstreamTimeout, match="free slot"):
        await waiter
    await first.aclose()


async def test_a_waiter_that_gives_up_does_not_keep_a_slot() -> None:
    a = Fake("a", ["llama3"])
    a.hold = asyncio.Event()
    routed = router(a, caps={"a": 1})
    first = await routed.open_stream(ask())
    waiter = asyncio.ensure_future(routed.answer(ask()))

    async def waiting() -> bool:
        return (await routed.health())[0].waiting == 1

    await eventually(waiting)
    waiter.cancel()
    await first.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter

    assert (await routed.health())[0].in_flight == 0


@pytest.mark.parametrize("where", ["opening", "first read"])
async def test_a_failure_before_the_first_piece_is_tried_once_elsewhere(where: str) -> None:
    a, b = Fake("a", ["llama3"]), Fake("b", ["llama3"])
    if where == "opening":
        a.refuse = [UpstreamFailed("a: runner crashed")]
    else:
        a.fail_at = 0
    stream = await router(a, b).open_stream(ask())

    got = [p.content async for batch in stream.batches() for p in batch]
    await stream.aclose()

    assert (stream.upstream, stream.attempts, got) == ("b", 2, ["a ", "b "])
    assert (len(a.calls), len(b.calls)) == (1, 1)


async def test_a_failure_after_the_first_piece_is_never_tried_again() -> None:
    a, b = Fake("a", ["llama3"]), Fake("b", ["llama3"])
    a.fail_at = 1
    stream = await router(a, b).open_stream(ask())
    got: list[str] = []

    async def read() -> None:
        async for batch in stream.batches():
            got.extend(p.content for p in batch)

    with pytest.raises(UpstreamFailed) as failed:
        await read()
    await stream.aclose()

    assert got == ["a "]
    assert (failed.value.upstream, failed.value.attempts) == ("a", 1)
    assert b.calls == []


async def test_a_whole_answer_reached_nobody_so_any_failure_is_tried_elsewhere() -> None:
    a, b = Fake("a", ["llama3"]), Fake("b", ["llama3"])
    a.fail_at = 1

    answer = await router(a, b).answer(ask())

    assert (answer.upstream, answer.attempts, answer.content) == ("b", 2, "a b ")


async def test_only_once_and_never_on_the_same_upstream() -> None:
    fakes = [Fake(name, ["llama3"]) for name in "abc"]
    for fake in fakes:
        fake.refuse = [UpstreamFailed(f"{fake.name} failed")] * 2
    routed = router(*fakes)

    with pytest.raises(UpstreamFailed) as failed:
        await routed.answer(ask())

    assert [len(f.calls) for f in fakes] == [1, 1, 0]
    assert (failed.value.upstream, failed.value.attempts) == ("b", 2)


async def test_a_request_an_upstream_found_wrong_is_not_tried_elsewhere() -> None:
    a, b = Fake("a", ["llama3"]), Fake("b", ["llama3"])
    a.refuse = [UpstreamRejected("bad options")]
    routed = router(a, b)

    with pytest.raises(UpstreamRejected):
        await routed.answer(ask())

    assert b.calls == []


async def test_an_unreachable_upstream_leaves_at_once_and_comes_back_by_itself() -> None:
    a, b = Fake("a", ["llama3"]), Fake("b", ["llama3"])
    routed = router(a, b, interval=0.05)
    await routed.models()
    a.down = True

    first = await routed.answer(ask())  # a refuses: b answers
    rest = [await routed.answer(ask()) for _ in range(3)]
    states = {h.name: h for h in await routed.health()}

    assert (first.upstream, first.attempts) == ("b", 2)
    assert {x.upstream for x in rest} == {"b"}
    assert len(a.calls) == 1
    assert (states["a"].status, states["a"].circuit) == ("down", "open")

    a.down = False

    async def back() -> bool:
        return {h.name: h.circuit for h in await routed.health()}["a"] == "closed"

    await eventually(back)
    assert (await routed.health())[0].status == "up"
    await routed.aclose()


async def test_an_upstream_that_answers_garbage_is_left_after_a_few_tries() -> None:
    a = Fake("a", ["llama3"], loaded=["llama3"])
    b = Fake("b", ["llama3"], loaded=["llama3"])
    a.refuse = [UpstreamBadResponse("a: not json")] * 10
    routed = router(a, b, weights={"a": 100})  # a would get nearly every call

    answers = [await routed.answer(ask()) for _ in range(6)]

    assert [x.attempts for x in answers] == [2, 2, 2, 1, 1, 1]
    assert len(a.calls) == 3
    assert {h.name: h.circuit for h in await routed.health()}["a"] == "open"


async def test_with_one_upstream_a_model_it_does_not_list_still_goes_to_it() -> None:
    a = Fake("a", ["llama3"])

    answer = await router(a).answer(ask("pulled-a-moment-ago"))

    assert answer.upstream == "a"


async def test_with_several_a_model_nobody_has_is_not_found() -> None:
    a, b = Fake("a", ["llama3"]), Fake("b", ["qwen"])

    with pytest.raises(ModelNotFound, match="no upstream has the model 'phi3'"):
        await router(a, b).answer(ask("phi3"))

    assert a.calls == b.calls == []


async def test_cloud_models_are_refused_unless_allowed() -> None:
    a = Fake("a", ["llama3", "gpt-oss:120b-cloud", "renamed"])
    a.listing[2] = ModelInfo(name="renamed", remote_host="https://ollama.com:443")
    refusing, allowing = router(a), router(Fake("b", ["llama3:cloud"]), allow_cloud=True)

    with pytest.raises(CloudModelRefused):
        await refusing.answer(ask("llama3:cloud"))
    with pytest.raises(CloudModelRefused):
        await refusing.answer(ask("renamed"))
    listed = [m.name for m in await refusing.models()]
    allowed = await allowing.answer(ask("llama3:cloud"))

    assert a.calls == []
    assert listed == ["llama3"]
    assert allowed.upstream == "b"


async def test_embeddings_fail_over_too() -> None:
    a, b = Fake("a", ["nomic"]), Fake("b", ["nomic"])
    a.refuse = [UpstreamUnavailable("a is gone")]

    result = await router(a, b).embed(EmbedRequest(model="nomic", input=["x", "y"]))

    assert (result.upstream, result.attempts, len(result.vectors)) == ("b", 2, 2)


async def test_a_slow_health_check_does_not_take_the_only_upstream_out() -> None:
    a = Fake("a", ["llama3"])
    routed = router(a, interval=0.05, probe_seconds=0.05)
    await routed.models()
    a.slow = 0.2  # every check now misses its deadline

    async def missed() -> bool:
        return (await routed.health())[0].error is not None

    await eventually(missed)
    answer = await routed.answer(ask())

    assert answer.upstream == "a"
    await routed.aclose()


async def test_a_broken_connection_is_checked_at_once_and_a_dead_server_leaves() -> None:
    a, b = Fake("a", ["llama3"], loaded=["llama3"]), Fake("b", ["llama3"])
    a.fail_at, a.fail_with = 1, UpstreamUnavailable  # its connection breaks mid-answer
    routed = router(a, b)
    stream = await routed.open_stream(ask())
    pieces = stream.batches()
    await anext(pieces)
    a.down = True  # and the server is gone: the check that follows cannot connect
    with pytest.raises(UpstreamUnavailable):
        await anext(pieces)
    await stream.aclose()

    async def left() -> bool:
        return {h.name: h.circuit for h in await routed.health()}["a"] == "open"

    await eventually(left)
    assert (await routed.answer(ask())).attempts == 1


async def test_one_broken_connection_on_a_live_server_keeps_it_in_routing() -> None:
    a, b = Fake("a", ["llama3"], loaded=["llama3"]), Fake("b", ["llama3"])
    a.fail_at, a.fail_with = 1, UpstreamUnavailable
    routed = router(a, b)
    stream = await routed.open_stream(ask())
    with pytest.raises(UpstreamUnavailable):
        [p async for batch in stream.batches() for p in batch]
    await stream.aclose()
    a.fail_at = None

    async def checked() -> bool:
        return not routed._checks  # the check the break set off is done

    await eventually(checked)
    answer = await routed.answer(ask())

    assert {h.name: h.circuit for h in await routed.health()}["a"] == "closed"
    assert (answer.upstream, answer.attempts) == ("a", 1)


async def test_a_server_whose_check_is_reset_as_it_dies_comes_back_by_itself() -> None:
    # A server killed mid-answer: its listening socket may still take the check's connection
    # and then reset it, which is not the refusal a check of a server that is gone gets. A
    # health check that cannot complete its small GET on a fresh connection means the server
    # is not serving, so it is down, not wary: when it answers again (here restarted at once,
    # as a supervisor does), its circuit closes without waiting for a trial call.
    a, b = Fake("a", ["llama3"], loaded=["llama3"]), Fake("b", ["llama3"])
    routed = router(a, b, interval=0.05)
    await routed.models()
    a.fail_at, a.fail_with = 1, UpstreamUnavailable
    stream = await routed.open_stream(ask())
    pieces = stream.batches()
    await anext(pieces)
    a.reset = True  # the checks' connections are reset
    with pytest.raises(UpstreamUnavailable):
        await anext(pieces)
    await stream.aclose()

    async def circuit(state: str) -> bool:
        return {h.name: h.circuit for h in await routed.health()}["a"] == state

    await eventually(lambda: circuit("open"))
    a.reset, a.fail_at = False, None
    await eventually(lambda: circuit("closed"), seconds=5)
    assert a.calls == ["llama3"]  # no trial call was needed
    await routed.aclose()


async def test_a_health_check_that_times_out_takes_the_upstream_out_at_once() -> None:
    # A hung server (it takes connections and answers nothing): its check timed out, /health
    # said down, and its circuit stayed closed for three checks more, while routing went on
    # preferring it (its model loaded) and each call waited the full --timeout.
    a = Fake("a", ["llama3"], loaded=["llama3"])
    b = Fake("b", ["llama3"])
    routed = router(a, b, interval=5.0, probe_seconds=0.05)
    # A server found down is probed again every second; here every 0.02 s, so that its
    # coming back is seen at once. Up servers are still checked only every 5 s: none is
    # checked meanwhile but by the one check below.
    routed._retry = routed.members[0].breaker.retry = 0.02
    await routed.models()
    a.slow = 60.0  # hung from now on

    await routed._check(routed.members[0])  # one check, as the next interval's
    states = {h.name: h for h in await routed.health()}
    answer = await routed.answer(ask())

    assert (states["a"].status, states["a"].circuit) == ("down", "open")
    assert "did not answer within 0.05 s" in (states["a"].error or "")
    assert (answer.upstream, answer.attempts) == ("b", 1)
    assert a.calls == []

    a.slow = 0.0  # it answers again: the next check puts it back, no trial call needed

    async def back() -> bool:
        return {h.name: h.circuit for h in await routed.health()}["a"] == "closed"

    await eventually(back)
    await routed.aclose()


async def test_calls_that_time_out_are_tried_elsewhere_and_count_against_the_upstream() -> None:
    # A first-byte timeout (or --timeout) says the upstream is not answering: tried once
    # elsewhere, and after a few in a row the upstream leaves the routing, as for garbage.
    a = Fake("a", ["llama3"], loaded=["llama3"])
    b = Fake("b", ["llama3"], loaded=["llama3"])
    a.refuse = [UpstreamTimeout("a sent no first byte within 1 s")] * 10
    routed = router(a, b, weights={"a": 100})

    answers = [await routed.answer(ask()) for _ in range(6)]

    assert [x.attempts for x in answers] == [2, 2, 2, 1, 1, 1]
    assert {x.upstream for x in answers} == {"b"}
    assert {h.name: h.circuit for h in await routed.health()}["a"] == "open"
    await routed.aclose()
