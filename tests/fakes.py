"""A scripted upstream (`calls.upstream.Upstream`) for tests of the pipeline and the routes.

Each answer is a script: what `answer` returns or raises, and for a stream, the batches it
yields in turn, where an exception is raised at that point and `HOLD` waits until the test
releases it (or the stream is closed). Nothing here knows any server's wire format.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from calls.errors import UpstreamError
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
from calls.upstream import UpstreamHealth

# A step of a stream's script: wait here until `FakeUpstream.release` is set.
HOLD = "hold"

METRICS = Metrics(
    done_reason="stop",
    input_tokens=3,
    output_tokens=2,
    upstream_seconds=0.5,
    load_seconds=0.1,
    prompt_eval_seconds=0.1,
    eval_seconds=0.3,
)

Step = list[Piece] | BaseException | str


class FakeStream:
    """An open streamed answer that plays its script."""

    def __init__(self, upstream: FakeUpstream, steps: list[Step], metrics: Metrics | None) -> None:
        self._upstream = upstream
        self._steps = steps
        self._final = metrics
        self.upstream: str | None = "fake"
        self.attempts = 2
        self.metrics: Metrics | None = None
        self.gpu: GpuUse | None = None
        self.closed = False

    async def batches(self) -> AsyncIterator[list[Piece]]:
        for step in self._steps:
            if step == HOLD:
                self._upstream.holding.set()
                await self._upstream.release.wait()
            elif isinstance(step, BaseException):
                raise step
            else:
                assert isinstance(step, list)
                yield step
        self.metrics = self._final

    async def aclose(self) -> None:
        self.closed = True


class FakeUpstream:
    """An upstream that answers as scripted, and remembers what it was asked."""

    def __init__(
        self,
        *,
        content: str = "w0 w1 ",
        steps: list[Step] | None = None,
        metrics: Metrics | None = METRICS,
        fail: UpstreamError | None = None,
        hold: bool = False,
        health: list[UpstreamHealth] | None = None,
    ) -> None:
        self.content = content
        self.steps: list[Step] = steps if steps is not None else [[Piece("w0 ")], [Piece("w1 ")]]
        self.metrics = metrics
        # Raised by answer, open_stream and embed alike.
        self.fail = fail
        # Whole answers (and stream opening) wait for `release` first.
        self.hold = hold
        self.release = asyncio.Event()
        # Set once a call is waiting on `release`.
        self.holding = asyncio.Event()
        self._health = health
        self.asked: list[CallRequest | EmbedRequest] = []
        self.streams: list[FakeStream] = []
        self.closed = False

    async def _wait(self) -> None:
        if self.hold:
            self.holding.set()
            await self.release.wait()
        if self.fail is not None:
            raise self.fail

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo(name="llama3:latest"), ModelInfo(name="qwen:latest")]

    async def loaded(self) -> list[LoadedModel]:
        return []

    async def show(self, model: str) -> ModelInfo:
        return ModelInfo(name=model)

    async def version(self) -> str:
        return "0.0-fake"

    async def health(self) -> list[UpstreamHealth]:
        if self._health is not None:
            return self._health
        return [UpstreamHealth(name="fake", kind="fake", address="fake://", status="up")]

    async def answer(self, request: CallRequest) -> Answer:
        self.asked.append(request)
        await self._wait()
        assert self.metrics is not None
        return Answer(content=self.content, metrics=self.metrics, upstream="fake", attempts=2)

    async def open_stream(self, request: CallRequest) -> FakeStream:
        self.asked.append(request)
        await self._wait()
        stream = FakeStream(self, self.steps, self.metrics)
        self.streams.append(stream)
        return stream

    async def embed(self, request: EmbedRequest) -> Embeddings:
        self.asked.append(request)
        await self._wait()
        return Embeddings(
            vectors=[[0.5, 0.25] for _ in request.input], input_tokens=4, upstream="fake"
        )

    async def aclose(self) -> None:
        self.closed = True
