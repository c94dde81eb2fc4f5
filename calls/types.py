"""A call in the gateway's own terms: what is asked, by whom, and what comes back.

Every front (the seed's API, Ollama's, OpenAI's) translates its body into these structs, and
every upstream kind translates them into its server's wire format. They follow Ollama's
vocabulary where a choice was needed (it is the richest of the three), so an Ollama client's
request passes through without loss.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from .bounds import MAX_SECONDS, MAX_TOKENS, seconds_or_none, tokens_or_none

# Ollama model names: `name`, `name:tag`, `namespace/name:tag` or `host/namespace/name:tag`.
# Each part starts with a letter or digit, so `../x`, `/x` and `host:port/x` never reach an
# upstream.
_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
MODEL_PATTERN = rf"^{_PART}(/{_PART}){{0,2}}(:[A-Za-z0-9_][A-Za-z0-9_.\-]*)?$"
ModelName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=MODEL_PATTERN,
        description="The model to ask, as `ollama list` names it.",
        examples=["llama3", "llama3.2:latest"],
    ),
]


class ToolFunction(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    index: int | None = None


class ToolCall(msgspec.Struct, omit_defaults=True):
    function: ToolFunction
    id: str | None = None


class Message(msgspec.Struct, omit_defaults=True):
    """One message of a conversation. Images are base64, without a `data:` prefix."""

    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    # For role "tool": which tool answered, and to which call.
    tool_name: str | None = None
    tool_call_id: str | None = None


class Generation(msgspec.Struct, omit_defaults=True, frozen=True):
    """How to generate: passed to the upstream as given, None meaning its default."""

    options: dict[str, Any] | None = None
    # "json", or a JSON schema the answer must follow.
    format: str | dict[str, Any] | None = None
    # True/False, or a level ("low", "medium", "high") for models that take one.
    think: bool | str | None = None
    keep_alive: str | float | None = None
    tools: list[dict[str, Any]] | None = None
    # Fields the upstream accepts that the gateway has no name for (Ollama's `truncate`,
    # `shift`, `logprobs`, ...): passed through as they came.
    extra: dict[str, Any] | None = None


class Completion(msgspec.Struct, omit_defaults=True, frozen=True):
    """A raw completion of a prompt (Ollama's /api/generate) rather than a chat."""

    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool | None = None
    context: list[int] | None = None
    images: list[str] | None = None


class CallRequest(msgspec.Struct, kw_only=True):
    """What to ask: a chat (messages), or a completion (`completion` set)."""

    model: str
    messages: list[Message] = msgspec.field(default_factory=list)
    completion: Completion | None = None
    generation: Generation = Generation()

    def prompt_size(self) -> int:
        """Characters of prompt text: what --max-prompt limits."""
        size = sum(len(m.content) for m in self.messages)
        if self.completion is not None:
            size += len(self.completion.prompt) + len(self.completion.system or "")
            size += len(self.completion.suffix or "")
        return size


class EmbedRequest(msgspec.Struct, kw_only=True):
    model: str
    input: list[str]
    truncate: bool | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None


class Labels(msgspec.Struct, frozen=True, kw_only=True):
    """The accounting labels a call carries into its record."""

    project: str | None = None
    process_id: str | None = None
    subprocess_id: str | None = None


# -- what comes back ------------------------------------------------------------------------


class GpuUse(msgspec.Struct, frozen=True, kw_only=True):
    """The GPU time a call used on the upstream that served it, and its price (None: the
    upstream has no `cost`); upstreams.gputime says by which rule."""

    seconds: float
    cost: float | None = None


class Metrics(msgspec.Struct, kw_only=True):
    """The upstream's own account of one answer, durations in seconds; None when unknown."""

    done_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    upstream_seconds: float | None = None
    load_seconds: float | None = None
    prompt_eval_seconds: float | None = None
    eval_seconds: float | None = None
    # A completion's context, which a client may pass back to continue it.
    context: list[int] | None = None
    # Set by the router that ran the call: the GPU time it used there.
    gpu: GpuUse | None = None

    def __post_init__(self) -> None:
        # Untrusted: bounded as they enter (calls/bounds.py), whichever upstream sent them.
        # Every call makes one: the figures are tested here in line, and only one out of
        # bounds goes through bounds.py (which logs it); six calls each time cost more.
        tokens, seconds = MAX_TOKENS, MAX_SECONDS
        value: float | None = self.input_tokens
        if value is not None and not 0 <= value <= tokens:
            self.input_tokens = tokens_or_none(self.input_tokens, "input_tokens")
        value = self.output_tokens
        if value is not None and not 0 <= value <= tokens:
            self.output_tokens = tokens_or_none(self.output_tokens, "output_tokens")
        value = self.upstream_seconds
        if value is not None and not 0 <= value <= seconds:
            self.upstream_seconds = seconds_or_none(value, "upstream_seconds")
        value = self.load_seconds
        if value is not None and not 0 <= value <= seconds:
            self.load_seconds = seconds_or_none(value, "load_seconds")
        value = self.prompt_eval_seconds
        if value is not None and not 0 <= value <= seconds:
            self.prompt_eval_seconds = seconds_or_none(value, "prompt_eval_seconds")
        value = self.eval_seconds
        if value is not None and not 0 <= value <= seconds:
            self.eval_seconds = seconds_or_none(value, "eval_seconds")


class Piece(msgspec.Struct):
    """One streamed chunk of the answer."""

    content: str = ""
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None


class Answer(msgspec.Struct, kw_only=True):
    """A whole answer, and which upstream gave it after how many tries."""

    content: str
    metrics: Metrics
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None
    upstream: str | None = None
    attempts: int = 1


class Embeddings(msgspec.Struct, kw_only=True):
    vectors: list[list[float]]
    input_tokens: int | None = None
    upstream_seconds: float | None = None
    load_seconds: float | None = None
    upstream: str | None = None
    attempts: int = 1
    gpu: GpuUse | None = None

    def __post_init__(self) -> None:
        # Untrusted: bounded as they enter (calls/bounds.py), tested in line as in Metrics.
        value: float | None = self.input_tokens
        if value is not None and not 0 <= value <= MAX_TOKENS:
            self.input_tokens = tokens_or_none(self.input_tokens, "input_tokens")
        value = self.upstream_seconds
        if value is not None and not 0 <= value <= MAX_SECONDS:
            self.upstream_seconds = seconds_or_none(value, "upstream_seconds")
        value = self.load_seconds
        if value is not None and not 0 <= value <= MAX_SECONDS:
            self.load_seconds = seconds_or_none(value, "load_seconds")


class ModelInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One model an upstream has, in the gateway's terms. None: the upstream does not say
    (each front decides what to show for it). `raw` is the upstream's own description, as it
    said it, for a front that relays it."""

    name: str
    family: str | None = None
    families: list[str] | None = None
    # As Ollama writes them: "8.0B", "134.52M"; "Q4_K_M".
    parameter_size: str | None = None
    parameter_count: int | None = None
    quantization: str | None = None
    # The weights' file format ("gguf"), its size in bytes, and a digest that changes with it.
    format: str | None = None
    size: int | None = None
    digest: str | None = None
    # RFC 3339.
    modified_at: str | None = None
    # The longest context the model takes (what it was trained for).
    context_length: int | None = None
    # What it can do, in Ollama's words: "completion", "tools", "vision", "embedding", ...
    capabilities: list[str] | None = None
    # Whether it is loaded in memory now.
    loaded: bool | None = None
    # A model the server runs elsewhere (Ollama's cloud models): where, and under what name.
    remote_host: str | None = None
    remote_model: str | None = None
    # What show() adds: the weights' metadata (GGUF keys), the prompt template, the default
    # parameters, the recipe and the licence, each as the server gives it.
    metadata: dict[str, Any] | None = None
    template: str | None = None
    parameters: str | None = None
    modelfile: str | None = None
    license: str | None = None
    raw: dict[str, Any] | None = None


class LoadedModel(ModelInfo, kw_only=True, omit_defaults=True):
    """A model loaded in memory now."""

    # Bytes it holds in memory, and how many of them are in GPU memory.
    memory: int | None = None
    vram: int | None = None
    # When the server unloads it (RFC 3339); None: not before it stops.
    expires_at: str | None = None
    # The context it is loaded with (at most context_length).
    loaded_context: int | None = None
