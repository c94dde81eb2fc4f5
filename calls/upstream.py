"""The upstream seam: what the pipeline needs from a model server, as a small interface.

`ollama_client.OllamaUpstream` (Ollama's native API) and `openai_client.OpenAIUpstream` (an
OpenAI-compatible server: llama-server, vLLM, LM Studio) implement this `Protocol`, and
`upstreams.Router`, several servers behind one address, is one more that routes among
others; the pipeline does not know which it has. What crosses it is typed: neutral calls
and answers, and models as `ModelInfo` and `LoadedModel`, never a server's own wire shape.
Every method fails only with `calls.errors.UpstreamError` and its subclasses, never with
a transport's own exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Literal, Protocol, runtime_checkable

import msgspec

from .types import (
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

# Where a router leaves the GPU time of a whole call (an answer, embeddings) that ends without
# a result or an UpstreamError to carry it: one cancelled by its client, or cut by a shutdown.
# The pipeline sets a list here for each whole call (it runs in the caller's own task).
gpu_tab: ContextVar[list[GpuUse] | None] = ContextVar("gpu_tab", default=None)


class UpstreamHealth(msgspec.Struct, kw_only=True):
    """One model server as the gateway sees it right now."""

    name: str
    kind: str
    address: str
    status: Literal["up", "down"]
    version: str | None = None
    error: str | None = None
    # Calls it is serving now, and how many it may serve at once (None: no cap).
    in_flight: int = 0
    capacity: int | None = None
    models: list[str] | None = None
    # For one of several: its circuit breaker (closed, open or half-open), the calls waiting
    # for a free slot that it could serve, and the models it has loaded now.
    circuit: str | None = None
    waiting: int | None = None
    loaded: list[str] | None = None
    # The fair queue: "on (configured cap)", "on (server cap)", or "off: no cap, ...", and
    # whether its caps and queue are shared through Redis or kept by this gateway alone.
    fairness: str | None = None
    shared: str | None = None
    # Its GPUs and its price per GPU-hour (upstreams.gputime), for one of several.
    gpus: int | None = None
    cost: float | None = None


class Queued(Protocol):
    """A call as a router sees it while it gets a slot: where it notes the wait, and what
    its model's residency on the upstream cost it."""

    # Seconds it waited in line for a free upstream slot, once one was granted (summed over
    # a failover's second slot); None before.
    queue_seconds: float | None
    # Whether the upstream had to load the model for it, and which models (", "-joined) that
    # load unloaded: the model itself when it was reloaded for another context.
    cold_start: bool | None
    evicted: str | None


# The call the current task makes (the pipeline sets it; a stream's opening task inherits
# it): a router that makes it wait for a slot says how long on it.
queued_call: ContextVar[Queued | None] = ContextVar("queued_call", default=None)


class ResidencyEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A model's residency changing on one upstream, as its /api/ps (or /slots) showed it."""

    at: str  # ISO 8601 UTC
    model: str
    event: Literal["loaded", "unloaded", "reloaded"]
    # The context it was loaded with, when the server says.
    context: int | None = None


class UpstreamResidency(msgspec.Struct, kw_only=True):
    """Which models one upstream holds now, and how that changed lately (oldest first)."""

    name: str
    loaded: list[str]
    events: list[ResidencyEvent]


@runtime_checkable
class WatchesResidency(Protocol):
    """An upstream that keeps the residency of models on its servers (the router does)."""

    def residency(self) -> list[UpstreamResidency]: ...


class AnswerStream(Protocol):
    """An answer being streamed. Iterate `batches()`; close it with `aclose()`, always.

    Closing it before the end closes the upstream request, which is how a server learns to
    stop generating an answer nobody will read.
    """

    # Which upstream is answering, and how many were tried to get here.
    upstream: str | None
    attempts: int
    # The upstream's final account, set when the stream has ended normally.
    metrics: Metrics | None
    # The GPU time the stream used, set by a router once it has ended or been closed
    # (whatever ended it); None from a single server, which cannot tell.
    gpu: GpuUse | None

    def batches(self) -> AsyncIterator[list[Piece]]:
        """The pieces as they arrive, a list per read: never empty."""
        ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """One model server, or several behind one face."""

    async def models(self) -> list[ModelInfo]:
        """The models it has, each once."""
        ...

    async def loaded(self) -> list[LoadedModel]:
        """The models loaded in memory now."""
        ...

    async def show(self, model: str) -> ModelInfo:
        """Everything the server says of one model (ModelNotFound if it has none such)."""
        ...

    async def version(self) -> str: ...

    async def health(self) -> list[UpstreamHealth]:
        """The state of each server behind this upstream, without waiting long on any."""
        ...

    async def answer(self, request: CallRequest) -> Answer:
        """A whole answer."""
        ...

    async def open_stream(self, request: CallRequest) -> AnswerStream:
        """Start a streamed answer; returns once the server has accepted it."""
        ...

    async def embed(self, request: EmbedRequest) -> Embeddings: ...

    async def aclose(self) -> None: ...


class ModelServer(Upstream, Protocol):
    """One model server of some kind (each upstream kind's class is one): an Upstream with a
    name and an address, which a router can hold among several."""

    name: str
    kind: str
    address: str
    # True when the server knows a model only by its exact id (an OpenAI-compatible one):
    # a router then sends the model under the name the server listed it by.
    exact_model_names: bool

    async def capacity(self) -> int | None:
        """The calls the server says it runs at once (llama-server's `total_slots`), or None
        when it does not say."""
        ...
