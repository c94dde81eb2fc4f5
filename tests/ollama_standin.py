"""A stand-in for the Ollama HTTP server, plus a launcher for tests and benchmarks.

Ollama itself cannot be installed on the test machines, so this module serves the subset of
its API the gateway uses (see shared/OLLAMA_API.md), shaped exactly like the real thing:
NDJSON streams, durations in nanoseconds, `{"error": ...}` bodies, `omitempty` metrics.

How a reply behaves is chosen by directives of the form ``[[name=value]]`` written in the
*last user message* of a /api/chat request, so the gateway under test never needs to know it is
talking to a stand-in:

=============  ===============================================================================
tokens=N       answer with N tokens (default 8); token i is ``f"w{i} "``
tricky=1       answer with TRICKY_TOKENS (newlines, quotes, emoji, fake SSE fields, HTML)
delay=S        sleep S seconds between streamed lines
load=S         sleep S seconds before the first line / the reply (reported as load_duration)
error_after=K  stream: K token lines, then ``{"error": ...}`` and end (no done line, still 200);
               non-stream: 500 ``{"error": "runner crashed"}``
stall=K        stream: K token lines, then silence until the client hangs up;
               non-stream: never answer until the client hangs up
status=CODE    answer at once with that status and Ollama's error message for it
garbage=1      stream: one token line, then a line that is not JSON, then end;
               non-stream: 200 with body ``not json``
nometrics=1    omit every metric field from the done line / reply (Go ``omitempty``)
report=S       report S seconds of generation (eval_duration) whatever it took: a server whose
               calls overlap on one GPU, each timing its own, or one that claims too much
think=1        the first two chunks' messages also carry ``"thinking": "hmm "``
thinking=N     stream: N chunks carrying only ``"thinking": "t{i} "`` (empty content) before the
               answer; with stall=0 the stream stalls right after them (a model still thinking)
tool_calls=1   answer by calling the request's first tool (arguments made from its parameters'
               schema), in a chunk of its own when streamed; needs ``tools``
echo=1         the answer's text is a JSON object of what arrived besides the prompt: options,
               format, think, keep_alive, tools, the images' count, system, suffix, ... so a test
               sees that a field reached Ollama
=============  ===============================================================================

A request with a ``format`` (``"json"`` or a JSON schema) is answered with a JSON document: an
instance of the schema, made from its ``type``/``properties``/``items``/``enum``.

/api/generate takes the same directives in its ``prompt``; its lines carry ``response``, and its
last line ``context``. /api/embed answers each input with a deterministic unit vector (8 numbers,
fewer with a smaller ``dimensions``, as Ollama cuts a model's vectors) and counts its words as
prompt tokens; /api/embeddings answers one prompt with
an unnormalized one. Images must be base64, as Ollama decodes them.

A 401 is answered as Ollama answers a cloud model while it is not signed in to ollama.com:
``{"error": "unauthorized", "signin_url": "https://ollama.com/connect?..."}``. A path with no
route gets gin's plain-text ``404 page not found``, as from Ollama itself.

A misspelt directive or value is answered with 400 ``{"error": "stand-in: ..."}`` so test typos
fail loudly instead of silently using defaults.

Test-only observation endpoints live under ``/_standin/``: ``GET calls`` (one record per
/api/chat, /api/generate, /api/embed or /api/embeddings request, in arrival order, with its
path and its body, images replaced by their lengths), ``POST reset`` and ``GET open``.

Run as a script: ``python tests/ollama_standin.py --host 127.0.0.1 --port PORT [--models a,b]
[--delay S] [--memory BYTES --load-seconds S]`` (``--delay``: a slow server, S seconds between
streamed lines unless asked otherwise), or from Python with :func:`start_standin`.

With ``--memory`` the stand-in holds models as Ollama's scheduler does on a GPU of that size: a
call for a model that is not loaded, or that is loaded with another ``num_ctx`` (Ollama reloads
a model for a different context), loads it first, taking ``--load-seconds`` (reported in
``load_duration``), and unloads the least recently used models until it fits. /api/ps then
lists what is loaded, each with the ``context_length`` it was loaded with.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import math
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel
import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from starlette.types import Receive, Scope, Send

# The context a model is loaded with when a call names none (Ollama's default num_ctx).
DEFAULT_CONTEXT: Final = 4096
DEFAULT_MODELS: Final = ["llama3:latest", "qwen:latest", "mistral:latest", "custom-model:latest"]
VERSION: Final = "0.12.0"
EMBEDDING_LENGTH: Final = 8

# The answer for [[tricky=1]]: every token is something a naive SSE/JSON relay gets wrong.
TRICKY_TOKENS: Final = [
    "line1\nline2",
    ' "quoted" ',
    "emoji 🦙 ",
    "data: fake\n\n",
    "event: x\r\n",
    "id: 9\r",
    "<img src=x onerror=alert(1)>",
    " end",
]

# Ollama's own messages for the statuses a test may ask for with [[status=CODE]].
STATUS_MESSAGES: Final = {
    400: "bad request",
    401: "unauthorized",
    404: "model not found, try pulling it first",
    499: "client disconnected",
    500: "llama runner process has terminated",
    503: "server busy, please try again.  maximum pending requests exceeded",
}

# What Ollama sends with a 401 for a cloud model (server/routes.go signinURLStr).
SIGNIN_URL: Final = "https://ollama.com/connect?name=standin&key=c3RhbmQtaW4ta2V5"
_MODIFIED_AT: Final = "2025-01-15T10:20:30.123456789Z"
_JSON: Final = b"application/json; charset=utf-8"  # what gin sends with c.JSON
_NDJSON: Final = b"application/x-ndjson"  # what Ollama sends for streams
# Fake cost of evaluating one prompt token. Nothing is evaluated, but prompt_eval_duration must
# be plausible and non-zero (a zero would be omitted, as Go's omitempty does).
_PROMPT_NS_PER_WORD: Final = 20_000

# With no delay, a stream yields to the event loop every this many lines (see _Turn.stream).
_YIELD_EVERY: Final = 8

_encode = msgspec.json.encode


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _normalize_model(name: str) -> str:
    """Canonical form of a model name, as Ollama matches them: "llama3" is "llama3:latest"."""
    name = name.strip().lower()
    name = name.removeprefix("registry.ollama.ai/").removeprefix("library/")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name += ":latest"
    return name


@dataclass(frozen=True, slots=True)
class _Model:
    name: str
    size: int
    digest: str
    family: str

    @classmethod
    def make(cls, name: str) -> _Model:
        name = _normalize_model(name)
        digest = hashlib.sha256(name.encode()).hexdigest()
        base = name.rsplit("/", 1)[-1].split(":", 1)[0]
        family = base.rstrip("0123456789.") or base
        # Deterministic but varied sizes, roughly those of small quantized models.
        return cls(name, 1_000_000_000 + int(digest[:8], 16) % 4_000_000_000, digest, family)

    @property
    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": "7.2B",
            "quantization_level": "Q4_K_M",
        }

    def tag_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": _MODIFIED_AT,
            "size": self.size,
            "digest": self.digest,
            "details": self.details,
        }

    def show(self) -> dict[str, Any]:
        return {
            "modelfile": f"# Modelfile generated by the Ollama stand-in\nFROM {self.name}\n",
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": self.details,
            "model_info": {
                "general.architecture": self.family,
                "general.parameter_count": 7_241_732_096,
                f"{self.family}.context_length": 8192,
            },
            "capabilities": ["completion"],
            "modified_at": _MODIFIED_AT,
        }


# --------------------------------------------------------------------------------------------
# Directives
# --------------------------------------------------------------------------------------------

_DIRECTIVE_RE: Final = re.compile(r"\[\[([A-Za-z_]+)=([^\[\]]*)\]\]")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise ValueError(text)
    return value


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError(text)


def _status_code(text: str) -> int:
    value = int(text)
    if not 100 <= value <= 599:
        raise ValueError(text)
    return value


_PARSERS: Final[dict[str, Callable[[str], object]]] = {
    "tokens": _non_negative_int,
    "tricky": _flag,
    "delay": _non_negative_float,
    "load": _non_negative_float,
    "error_after": _non_negative_int,
    "stall": _non_negative_int,
    "status": _status_code,
    "garbage": _flag,
    "nometrics": _flag,
    "report": _non_negative_float,
    "think": _flag,
    "thinking": _non_negative_int,
    "tool_calls": _flag,
    "echo": _flag,
}


@dataclass(frozen=True, slots=True)
class Plan:
    """How to answer one chat request, from the directives in its last user message."""

    tokens: int = 8
    tricky: bool = False
    delay: float = 0.0
    load: float = 0.0
    error_after: int | None = None
    stall: int | None = None
    status: int | None = None
    garbage: bool = False
    nometrics: bool = False
    report: float | None = None
    think: bool = False
    thinking: int = 0
    tool_calls: bool = False
    echo: bool = False

    @classmethod
    def from_messages(cls, messages: list[Any]) -> Plan:
        """Read directives from the last user message; raises ValueError on a bad directive."""
        content = ""
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                found = message.get("content")
                content = found if isinstance(found, str) else ""
                break
        if "[[" not in content:  # the common case: no regex work at all
            return _DEFAULT_PLAN
        values: dict[str, Any] = {}
        for name, raw in _DIRECTIVE_RE.findall(content):
            parser = _PARSERS.get(name)
            if parser is None:
                raise ValueError(f"unknown directive [[{name}=...]]")
            try:
                values[name] = parser(raw)
            except ValueError:
                raise ValueError(f"bad value in directive [[{name}={raw}]]") from None
        return cls(**values)

    def answer_tokens(self) -> list[str]:
        return list(TRICKY_TOKENS) if self.tricky else [f"w{i} " for i in range(self.tokens)]


_DEFAULT_PLAN: Final = Plan()


# --------------------------------------------------------------------------------------------
# Call log
# --------------------------------------------------------------------------------------------


class CallRecord(msgspec.Struct):
    """What the stand-in saw of one request (served by GET /_standin/calls)."""

    n: int
    started: float
    path: str = "/api/chat"
    # The request's JSON object, each image replaced by its length in characters.
    body: Any = None
    model: Any = None
    stream: bool = True
    messages: Any = msgspec.field(default_factory=list)
    options: Any = None
    ended: float | None = None
    tokens_sent: int = 0
    finished: bool = False  # a done:true line / reply was sent
    disconnected: bool = False  # the client hung up before the response was complete
    disconnected_at: float | None = None
    # The W3C trace context the request carried, if any (what a traced client passes on).
    traceparent: str | None = None


def _traceparent(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"traceparent":
            return str(value.decode("latin-1"))
    return None


class _State:
    def __init__(
        self,
        model_names: list[str],
        delay: float = 0.0,
        memory: int = 0,
        load_seconds: float = 0.0,
    ) -> None:
        # A slow server: seconds between streamed lines when the message asks for no delay.
        self.delay = delay
        # A memory budget (0: none), the time a load takes, and per loaded model the context
        # it was loaded with and when it was last used (for least-recently-used unloading).
        self.memory = memory
        self.load_seconds = load_seconds
        self.contexts: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self.models: dict[str, _Model] = {}
        for name in model_names:
            model = _Model.make(name)
            self.models[model.name] = model
        self.calls: list[CallRecord] = []
        self.next_n = 1
        self.open_streams = 0
        # The most requests it served at once since the start (or the last reset): what a
        # gateway's cap must bound, seen from the server's side.
        self.peak_streams = 0
        self.loaded: dict[str, float] = {}  # model name -> epoch when it expires (for /api/ps)
        # Pre-encoded answers for the endpoints that never change.
        self.tags_body = _encode({"models": [m.tag_entry() for m in self.models.values()]})
        self.version_body = _encode({"version": VERSION})

    def new_call(self) -> CallRecord:
        record = CallRecord(n=self.next_n, started=time.time())
        self.next_n += 1
        self.calls.append(record)
        return record

    def reset(self) -> None:
        self.calls = []
        self.next_n = 1
        self.peak_streams = self.open_streams

    def load(self, model: _Model, options: Any) -> float:
        """Make `model` resident for a call with these options; the seconds its load takes
        (0 when it was loaded already, as asked, or when there is no memory budget)."""
        context = DEFAULT_CONTEXT
        if isinstance(options, dict) and isinstance(options.get("num_ctx"), int):
            context = options["num_ctx"]
        now = time.time()
        resident = model.name in self.loaded and self.loaded[model.name] > now
        self.last_used[model.name] = now
        if self.memory <= 0:
            self.loaded[model.name] = now + 300
            self.contexts[model.name] = context
            return 0.0
        if resident and self.contexts.get(model.name) == context:
            self.loaded[model.name] = now + 300
            return 0.0
        self.loaded.pop(model.name, None)
        others = sorted(
            (name for name in self.loaded if self.loaded[name] > now),
            key=lambda name: self.last_used.get(name, 0.0),
        )
        used = sum(self.models[name].size for name in others)
        while others and used + model.size > self.memory:
            gone = others.pop(0)
            used -= self.models[gone].size
            del self.loaded[gone]
            self.contexts.pop(gone, None)
        self.loaded[model.name] = now + 300
        self.contexts[model.name] = context
        return self.load_seconds


# --------------------------------------------------------------------------------------------
# Wire helpers
# --------------------------------------------------------------------------------------------


class _Clock:
    """RFC 3339 timestamps with nanoseconds, like Go's time.Time JSON, cheap per call."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def now(self) -> bytes:
        ns = time.time_ns()
        second, frac = divmod(ns, 1_000_000_000)
        if second != self._second:  # strftime once per second, not once per chunk
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return b"%s.%09dZ" % (self._prefix, frac)


_clock = _Clock()

# JSON encodings of the default tokens, so a streamed line is mostly byte concatenation.
_TOKEN_TEXT: Final = [f"w{i} " for i in range(4096)]
_TOKEN_JSON: Final = [_encode(text) for text in _TOKEN_TEXT]


def _token_json(plan: Plan, index: int, token: str) -> bytes:
    # Only a default token is pre-encoded: a format's document or an echo replaces them.
    if not plan.tricky and index < len(_TOKEN_JSON) and token == _TOKEN_TEXT[index]:
        return _TOKEN_JSON[index]
    return _encode(token)


def _error_body(message: str) -> bytes:
    return _encode({"error": message})


def _go_quote(text: str) -> str:
    """Approximates Go's %q for the names that appear in error messages."""
    return _encode(text).decode()


class _Exchange:
    """One /api/chat response on the wire, and whether the client hung up during it.

    Starlette's StreamingResponse is deliberately not used:

    * Under uvicorn (which declares ASGI spec 2.3) it cancels the task iterating the body when
      http.disconnect arrives. If that lands in the generator's own await, its finally runs at
      once (CancelledError); if it lands in send() waiting for a drain, the generator is left
      suspended at its `yield` and its finally runs only when asyncio finalizes it later.
    * For an ASGI >= 2.4 server it does not listen for the disconnect at all, so a stalled
      stream would never notice the hang-up.
    * The disconnect is only seen when the body iterator awaits something. After a hang-up
      uvicorn's send() returns at once without yielding, so a generator that never awaits runs
      to its end (or, if endless, hangs the whole server; seen while writing this).

    Here a watcher task reads receive() for http.disconnect and cancels the work, whatever it
    is awaiting (a load sleep, a stall, a delay between chunks, a paused send), and records it.
    """

    __slots__ = ("complete", "record", "send", "state")

    def __init__(self, state: _State, record: CallRecord, send: Send) -> None:
        self.state = state
        self.record = record
        self.send = send
        # Set just before the last body message: after that uvicorn answers every receive()
        # with http.disconnect, which must not be mistaken for the client hanging up.
        self.complete = False

    async def start(self, status: int, content_type: bytes, length: int | None = None) -> None:
        headers = [(b"content-type", content_type)]
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    def end(self) -> None:
        """Mark the call over (idempotent).

        Called before the last bytes are sent, or as soon as the hang-up is seen, so that a
        test that has just read a whole response, or closed one, finds `ended` set and the open
        count down without racing the rest of the handler.
        """
        if self.record.ended is None:
            self.record.ended = time.time()
            self.state.open_streams -= 1

    async def finish(self, data: bytes = b"") -> None:
        self.complete = True
        self.end()
        await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def reply(self, status: int, body: bytes, content_type: bytes = _JSON) -> None:
        await self.start(status, content_type, len(body))
        await self.finish(body)

    async def run_watched(self, receive: Receive, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` until it completes or the client hangs up, whichever comes first."""
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass  # the body was already read; nothing else is expected
                if not self.complete:
                    self.record.disconnected = True
                    self.record.disconnected_at = time.time()
                    self.end()
                group.cancel_scope.cancel()

            group.start_soon(watch)
            await work()
            group.cancel_scope.cancel()  # stop the watcher


# --------------------------------------------------------------------------------------------
# /api/chat
# --------------------------------------------------------------------------------------------


def _count_words(messages: list[Any]) -> int:
    total = 0
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                total += len(content.split())
    return total


def _num_predict(options: Any) -> int | None:
    """options.num_predict when it limits generation (Ollama: only positive values do)."""
    if isinstance(options, dict):
        value = options.get("num_predict")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _images_counted(value: Any) -> Any:
    """A request body for the call log: each image replaced by its length."""
    if isinstance(value, dict):
        return {
            key: [len(i) if isinstance(i, str) else i for i in item]
            if key == "images" and isinstance(item, list)
            else _images_counted(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_images_counted(item) for item in value]
    return value


def _bad_image(req: dict[str, Any]) -> str | None:
    """Ollama decodes images from base64 into bytes; text that is not base64 fails there."""
    lists = [req.get("images")]
    messages = req.get("messages")
    if isinstance(messages, list):
        lists += [m.get("images") for m in messages if isinstance(m, dict)]
    for images in lists:
        if images is None:
            continue
        if not isinstance(images, list):
            return "invalid value for images: expected a list"
        for image in images:
            try:
                if not isinstance(image, str):
                    raise ValueError(image)
                base64.b64decode(image, validate=True)
            except (ValueError, binascii.Error):
                return "illegal base64 data in images"
    return None


def _instance(schema: Any, depth: int = 0) -> Any:
    """A value that follows a JSON schema (the subset structured outputs use)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _instance(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    properties = schema.get("properties")
    if kind == "object" or isinstance(properties, dict):
        props = properties if isinstance(properties, dict) else {}
        return {name: _instance(sub, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [_instance(schema.get("items"), depth + 1)]
    return {"string": "w0", "integer": 1, "number": 1.5, "boolean": True}.get(str(kind))


def _tool_call(tools: Any) -> dict[str, Any] | None:
    """A call of the first tool, with arguments made from its parameters' schema."""
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    function = tools[0].get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    arguments = _instance(function.get("parameters") or {"type": "object"})
    return {"function": {"name": function["name"], "arguments": arguments or {}}}


_ECHOED: Final = (
    "options",
    "format",
    "think",
    "keep_alive",
    "tools",
    "system",
    "template",
    "suffix",
    "raw",
    "context",
    "truncate",
    "shift",
    "logprobs",
    "top_logprobs",
)


def _echo(req: dict[str, Any], messages: list[Any]) -> str:
    echoed: dict[str, Any] = {key: req[key] for key in _ECHOED if key in req}
    images = [len(m.get("images") or []) for m in messages if isinstance(m, dict)]
    if isinstance(req.get("images"), list):
        images.append(len(req["images"]))
    echoed["images"] = images
    echoed["roles"] = [m.get("role") for m in messages if isinstance(m, dict)]
    tool_calls = [m.get("tool_calls") for m in messages if isinstance(m, dict)]
    echoed["tool_calls"] = [c for c in tool_calls if c]
    return _encode(echoed).decode()


class _AskEndpoint:
    """POST /api/chat or /api/generate as a raw ASGI app, so it controls the response and
    watches hang-ups."""

    def __init__(self, state: _State, generate: bool = False) -> None:
        self.state = state
        self.generate = generate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter_ns()
        self.state.open_streams += 1
        self.state.peak_streams = max(self.state.peak_streams, self.state.open_streams)
        exchange = _Exchange(self.state, self.state.new_call(), send)
        exchange.record.path = scope["path"]
        exchange.record.traceparent = _traceparent(scope)
        try:
            await self._handle(exchange, scope, receive, t0)
        finally:
            exchange.end()

    async def _handle(self, exchange: _Exchange, scope: Scope, receive: Receive, t0: int) -> None:
        record = exchange.record
        try:
            body = await Request(scope, receive).body()
        except ClientDisconnect:
            record.disconnected = True
            record.disconnected_at = time.time()
            return

        # ---- request validation, in Ollama's order ----
        if not body:
            await exchange.reply(400, _error_body("missing request body"))
            return
        try:
            req = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            await exchange.reply(400, _error_body(f"invalid JSON: {exc}"))
            return
        if not isinstance(req, dict):
            await exchange.reply(400, _error_body("invalid request: expected a JSON object"))
            return
        record.body = _images_counted(req)
        model_name = req.get("model")
        stream = req.get("stream")
        record.model = model_name
        record.options = req.get("options")
        if self.generate:
            prompt = req.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                await exchange.reply(
                    400, _error_body("invalid value for prompt: expected a string")
                )
                return
            messages: Any = [{"role": "user", "content": prompt}] if prompt else []
            if isinstance(req.get("system"), str):
                messages.insert(0, {"role": "system", "content": req["system"]})
            if not prompt and req.get("images"):
                messages.append({"role": "user", "content": ""})
        else:
            messages = req.get("messages")
        if isinstance(messages, list):
            record.messages = messages
        if stream is None:
            stream = True  # Ollama streams unless told not to
        if not isinstance(stream, bool):
            await exchange.reply(400, _error_body("invalid value for stream: expected a bool"))
            return
        record.stream = stream
        if messages is None:
            messages = []
        if not isinstance(messages, list):
            await exchange.reply(400, _error_body("invalid value for messages: expected a list"))
            return
        if not isinstance(model_name, str) or not model_name:
            await exchange.reply(400, _error_body("model is required"))
            return
        bad_image = _bad_image(req)
        if bad_image is not None:
            await exchange.reply(400, _error_body(bad_image))
            return
        model = self.state.models.get(_normalize_model(model_name))
        if model is None:
            message = f"model {_go_quote(model_name)} not found, try pulling it first"
            await exchange.reply(404, _error_body(message))
            return

        if not [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]:
            # Ollama answers an empty chat by loading (or, with keep_alive 0, unloading) the model.
            unload = req.get("keep_alive") in (0, "0", "0s")
            if unload:
                self.state.loaded.pop(model.name, None)
                self.state.contexts.pop(model.name, None)
            else:
                self.state.load(model, req.get("options"))
            reply: dict[str, Any] = {"model": model_name, "created_at": _clock.now().decode()}
            if self.generate:
                reply["response"] = ""
            else:
                reply["message"] = {"role": "assistant", "content": ""}
            reply.update(done=True, done_reason="unload" if unload else "load")
            record.finished = True
            await exchange.reply(200, _encode(reply))
            return

        try:
            plan = Plan.from_messages(messages)
        except ValueError as exc:
            await exchange.reply(400, _error_body(f"stand-in: {exc}"))
            return
        if self.state.delay and not plan.delay:
            plan = dataclasses.replace(plan, delay=self.state.delay)
        if plan.status is not None:
            text = STATUS_MESSAGES.get(plan.status, f"stand-in status {plan.status}")
            body = _error_body(text)
            if plan.status == 401:
                body = _encode({"error": text, "signin_url": SIGNIN_URL})
            await exchange.reply(plan.status, body)
            return
        tool_call = None
        if plan.tool_calls:
            tool_call = _tool_call(req.get("tools"))
            if tool_call is None:
                await exchange.reply(400, _error_body("stand-in: [[tool_calls=1]] needs tools"))
                return

        loading = self.state.load(model, req.get("options"))
        if loading:
            plan = dataclasses.replace(plan, load=plan.load + loading)
        tokens = plan.answer_tokens()
        if plan.echo:
            tokens = [_echo(req, messages)]
        elif req.get("format"):
            document = _encode(_instance(req["format"]) if req["format"] != "json" else {})
            text = document.decode()
            # In three pieces, as a model writes a document a few tokens at a time.
            third = max(1, len(text) // 3)
            pieces = [text[:third], text[third : 2 * third], text[2 * third :]]
            tokens = [piece for piece in pieces if piece]
        limit = _num_predict(record.options)
        done_reason = "stop"
        if limit is not None and limit < len(tokens):
            tokens = tokens[:limit]
            done_reason = "length"
        words = _count_words(messages)
        turn = _Turn(exchange, plan, model_name, tokens, done_reason, words, t0)
        turn.generate = self.generate
        turn.tool_call = tool_call
        work = turn.stream if stream else turn.whole
        await exchange.run_watched(receive, work)


class _Turn:
    """Produces one answer, streamed or whole, as chat or generate lines."""

    def __init__(
        self,
        exchange: _Exchange,
        plan: Plan,
        model: str,
        tokens: list[str],
        done_reason: str,
        prompt_words: int,
        t0: int,
    ) -> None:
        self.exchange = exchange
        self.plan = plan
        self.model = model
        self.tokens = tokens
        self.done_reason = done_reason
        self.prompt_words = prompt_words
        self.t0 = t0
        self.load_ns = 1
        self.generate = False
        self.tool_call: dict[str, Any] | None = None

    async def _load(self) -> None:
        start = time.perf_counter_ns()
        if self.plan.load > 0:
            await anyio.sleep(self.plan.load)
        # The event loop's timers may fire a little early by perf_counter's clock (uvloop has
        # millisecond timers): never report less than the load that was asked for.
        self.load_ns = max(1, time.perf_counter_ns() - start, int(self.plan.load * 1e9))

    def _final(self, message: dict[str, Any], gen_start: int) -> dict[str, Any]:
        # Generation takes at least the delays asked for (one per token, see stream/whole),
        # even when a timer fired a little early.
        planned_ns = int(self.plan.delay * 1e9) * len(self.tokens)
        eval_ns = max(1, time.perf_counter_ns() - gen_start, planned_ns)
        if self.plan.report is not None:
            eval_ns = int(self.plan.report * 1e9)
        final: dict[str, Any] = {"model": self.model, "created_at": _clock.now().decode()}
        if self.generate:
            final["response"] = message["content"]
            if "thinking" in message:
                final["thinking"] = message["thinking"]
        else:
            final["message"] = message
        final.update(done=True, done_reason=self.done_reason)
        if self.generate:
            final["context"] = [1, 2, 3]
        if not self.plan.nometrics:
            # Prompt evaluation is not simulated by sleeping; it is added to the total so that
            # total >= load + prompt_eval + eval holds, as it does for Ollama.
            prompt_ns = self.prompt_words * _PROMPT_NS_PER_WORD
            total_ns = max(
                time.perf_counter_ns() - self.t0 + prompt_ns, self.load_ns + prompt_ns + eval_ns
            )
            metrics = {
                "total_duration": total_ns,
                "load_duration": self.load_ns,
                "prompt_eval_count": self.prompt_words,
                "prompt_eval_duration": prompt_ns,
                "eval_count": len(self.tokens) + (1 if self.tool_call else 0),
                "eval_duration": eval_ns,
            }
            # Go's omitempty: a zero count is absent, not 0.
            final.update((key, value) for key, value in metrics.items() if value)
        return final

    def _line(self, head: bytes, text: bytes, thinking: bytes) -> bytes:
        if self.generate:
            return b'%s%s","response":%s%s,"done":false}\n' % (head, _clock.now(), text, thinking)
        return b'%s%s","message":{"role":"assistant","content":%s%s},"done":false}\n' % (
            head,
            _clock.now(),
            text,
            thinking,
        )

    async def stream(self) -> None:
        plan, exchange, record = self.plan, self.exchange, self.exchange.record
        await self._load()
        await exchange.start(200, _NDJSON)
        gen_start = time.perf_counter_ns()
        head = b'{"model":%s,"created_at":"' % _encode(self.model)
        for t in range(plan.thinking):
            if plan.delay > 0 and t > 0:
                await anyio.sleep(plan.delay)
            await exchange.chunk(self._line(head, b'""', b',"thinking":"t%d "' % t))
        n = len(self.tokens)
        # Where the stream breaks off, counted in token lines already sent.
        stall_at = None if plan.stall is None else min(plan.stall, n)
        error_at = None if plan.error_after is None else min(plan.error_after, n)
        garbage_at = min(1, n) if plan.garbage else None
        for i in range(n + 1):
            # `delay` separates lines: none before the first one.
            if plan.delay > 0 and i > 0:
                await anyio.sleep(plan.delay)
            if i == stall_at:
                await anyio.sleep_forever()  # until the watcher sees the client hang up
            if i == error_at:
                line = _encode({"error": f"runner crashed after {i} tokens"})
                await exchange.finish(line + b"\n")
                return
            if i == garbage_at:
                await exchange.finish(b"this is not json {\n")
                return
            if i == n:
                break
            thinking = b',"thinking":"hmm "' if plan.think and i < 2 else b""
            await exchange.chunk(self._line(head, _token_json(plan, i, self.tokens[i]), thinking))
            record.tokens_sent += 1
            if plan.delay == 0 and i % _YIELD_EVERY == _YIELD_EVERY - 1:
                # uvicorn's send() does not yield unless the socket is backed up, and after a
                # hang-up it returns at once, so without this a fast stream would run to its end
                # without the watcher ever seeing the disconnect. It also keeps concurrent
                # streams interleaved. Not every line: a yield per line costs ~35% throughput.
                await anyio.lowlevel.checkpoint()
        if self.tool_call is not None:
            # A chunk that carries only the tool call, as Ollama sends it.
            message = {"role": "assistant", "content": "", "tool_calls": [self.tool_call]}
            chunk: dict[str, Any] = {"model": self.model, "created_at": _clock.now().decode()}
            chunk.update(message=message, done=False)
            await exchange.chunk(_encode(chunk) + b"\n")
        final = self._final({"role": "assistant", "content": ""}, gen_start)
        record.finished = True
        await exchange.finish(_encode(final) + b"\n")

    async def whole(self) -> None:
        plan, exchange, record = self.plan, self.exchange, self.exchange.record
        await self._load()
        if plan.stall is not None:
            await anyio.sleep_forever()  # until the watcher sees the client hang up
        if plan.error_after is not None:
            await exchange.reply(500, _error_body("runner crashed"))
            return
        if plan.garbage:
            await exchange.reply(200, b"not json")
            return
        gen_start = time.perf_counter_ns()
        if plan.delay > 0 and self.tokens:
            await anyio.sleep(plan.delay * len(self.tokens))  # the time generation would take
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.tokens)}
        if plan.think and self.tokens:
            message["thinking"] = "hmm " * min(2, len(self.tokens))
        if self.tool_call is not None:
            message["tool_calls"] = [self.tool_call]
        final = self._final(message, gen_start)
        record.tokens_sent = len(self.tokens)
        record.finished = True
        await exchange.reply(200, _encode(final))


# --------------------------------------------------------------------------------------------
# /api/embed and /api/embeddings
# --------------------------------------------------------------------------------------------


def _vector(text: str, dimensions: int) -> list[float]:
    """A deterministic vector for a text: the same text always gets the same one."""
    seed = hashlib.sha256(text.encode()).digest()
    while len(seed) < dimensions:
        seed += hashlib.sha256(seed).digest()
    return [(byte - 127.5) / 127.5 for byte in seed[:dimensions]]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class _EmbedEndpoint:
    """POST /api/embed (several texts, unit vectors) or /api/embeddings (one prompt)."""

    def __init__(self, state: _State, legacy: bool = False) -> None:
        self.state = state
        self.legacy = legacy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter_ns()
        state = self.state
        record = state.new_call()
        record.path = scope["path"]
        record.traceparent = _traceparent(scope)
        record.stream = False
        try:
            response = await self._answer(record, await Request(scope, receive).body(), t0)
        except ClientDisconnect:
            record.disconnected = True
            record.disconnected_at = time.time()
            return
        finally:
            record.ended = time.time()
        await response(scope, receive, send)

    async def _answer(self, record: CallRecord, body: bytes, t0: int) -> Response:
        def fail(status: int, message: str) -> Response:
            return Response(_error_body(message), status_code=status, media_type=_JSON.decode())

        try:
            req = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            return fail(400, f"invalid JSON: {exc}")
        if not isinstance(req, dict):
            return fail(400, "invalid request: expected a JSON object")
        record.body = req
        record.model = req.get("model")
        record.options = req.get("options")
        name = req.get("model")
        if not isinstance(name, str) or not name:
            return fail(400, "model is required")
        model = self.state.models.get(_normalize_model(name))
        if model is None:
            return fail(404, f"model {_go_quote(name)} not found, try pulling it first")
        key = "prompt" if self.legacy else "input"
        given = req.get(key)
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return fail(400, f"invalid {key} type")
        record.messages = [{"role": "user", "content": t} for t in texts]
        dimensions = req.get("dimensions") or 0
        if not isinstance(dimensions, int) or dimensions < 0:
            return fail(400, "invalid dimensions")
        # The model's own length; Ollama cuts its vectors only to a smaller `dimensions`.
        dimensions = dimensions if 0 < dimensions < EMBEDDING_LENGTH else EMBEDDING_LENGTH
        self.state.loaded[model.name] = time.time() + 300
        record.tokens_sent = 0
        record.finished = True
        if self.legacy:
            reply: dict[str, Any] = {"embedding": _vector(texts[0], dimensions) if texts else []}
        else:
            words = sum(len(t.split()) for t in texts)
            reply = {
                "model": name,
                "embeddings": [_unit(_vector(t, dimensions)) for t in texts],
                "total_duration": max(1, time.perf_counter_ns() - t0),
                "load_duration": 1,
            }
            if words:
                reply["prompt_eval_count"] = words
        return Response(_encode(reply), media_type=_JSON.decode())


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def create_app(
    models: list[str] | None = None,
    *,
    delay: float = 0.0,
    memory: int = 0,
    load_seconds: float = 0.0,
) -> Starlette:
    state = _State(models if models else DEFAULT_MODELS, delay, memory, load_seconds)

    def json_response(body: bytes, status: int = 200) -> Response:
        return Response(body, status_code=status, media_type=_JSON.decode())

    async def root(request: Request) -> Response:
        return Response(b"Ollama is running", media_type="text/plain")

    async def tags(request: Request) -> Response:
        return json_response(state.tags_body)

    async def version(request: Request) -> Response:
        return json_response(state.version_body)

    async def ps(request: Request) -> Response:
        now = time.time()
        running = []
        for name, expires in list(state.loaded.items()):
            if expires <= now:
                del state.loaded[name]
                continue
            model = state.models[name]
            entry = model.tag_entry()
            del entry["modified_at"]
            entry["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
            entry["size_vram"] = model.size
            entry["context_length"] = state.contexts.get(name, DEFAULT_CONTEXT)
            running.append(entry)
        return json_response(_encode({"models": running}))

    async def show(request: Request) -> Response:
        try:
            req = msgspec.json.decode(await request.body())
        except msgspec.DecodeError as exc:
            return json_response(_error_body(f"invalid JSON: {exc}"), 400)
        if not isinstance(req, dict):
            return json_response(_error_body("invalid request: expected a JSON object"), 400)
        name = req.get("model") or req.get("name")  # "name" is the legacy spelling
        if not isinstance(name, str) or not name:
            return json_response(_error_body("model is required"), 400)
        model = state.models.get(_normalize_model(name))
        if model is None:
            return json_response(_error_body(f"model '{name}' not found"), 404)
        return json_response(_encode(model.show()))

    async def calls(request: Request) -> Response:
        return json_response(_encode(state.calls))

    async def reset(request: Request) -> Response:
        state.reset()
        return json_response(b"{}")

    async def open_streams(request: Request) -> Response:
        return json_response(
            _encode({"open_streams": state.open_streams, "peak_streams": state.peak_streams})
        )

    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/chat", _AskEndpoint(state), methods=["POST"]),
        Route("/api/generate", _AskEndpoint(state, generate=True), methods=["POST"]),
        Route("/api/embed", _EmbedEndpoint(state), methods=["POST"]),
        Route("/api/embeddings", _EmbedEndpoint(state, legacy=True), methods=["POST"]),
        Route("/_standin/calls", calls, methods=["GET"]),
        Route("/_standin/reset", reset, methods=["POST"]),
        Route("/_standin/open", open_streams, methods=["GET"]),
    ]

    async def no_route(request: Request, exc: Exception) -> Response:
        # gin's NoRoute answer, which Ollama sends for a path it does not serve.
        return Response(b"404 page not found", status_code=404, media_type="text/plain")

    return Starlette(routes=routes, exception_handlers={404: no_route})


def main(argv: list[str] | None = None) -> None:
    import uvicorn  # only the server process needs it

    parser = argparse.ArgumentParser(description="A stand-in Ollama server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    parser.add_argument("--delay", type=float, default=0.0, help="a slow server: S between lines")
    parser.add_argument("--memory", type=int, default=0, help="bytes of model memory (0: no limit)")
    parser.add_argument("--load-seconds", type=float, default=0.0, help="seconds a load takes")
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    uvicorn.run(
        create_app(models, delay=args.delay, memory=args.memory, load_seconds=args.load_seconds),
        host=args.host,
        port=args.port,
        loop="auto",  # uvloop when importable
        http="auto",  # httptools when importable
        access_log=False,
        log_level="warning",
        lifespan="off",
        server_header=False,  # Ollama (Go net/http) sends no Server header
        # Go's server never closes idle keep-alive connections; uvicorn's default (5 s) would
        # make a pooling client race the close and fail requests at random.
        timeout_keep_alive=600,
        # On SIGTERM do not wait forever for stalled streams whose clients are still connected.
        timeout_graceful_shutdown=1,
    )


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------

_SCRIPT: Final = Path(__file__).resolve()


class StandIn:
    """A running stand-in server process (see start_standin)."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self.url = url
        self.process = process
        self._stderr = stderr
        # trust_env=False: a proxy configured in the environment must not see loopback calls.
        self._client = httpx.Client(base_url=url, timeout=5.0, trust_env=False)

    def calls(self) -> list[dict[str, Any]]:
        response = self._client.get("/_standin/calls")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def open_streams(self) -> int:
        response = self._client.get("/_standin/open")
        response.raise_for_status()
        count: int = response.json()["open_streams"]
        return count

    def peak_streams(self) -> int:
        """The most requests it served at once since it started or was last reset."""
        response = self._client.get("/_standin/open")
        response.raise_for_status()
        peak: int = response.json()["peak_streams"]
        return peak

    def reset(self) -> None:
        self._client.post("/_standin/reset").raise_for_status()

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Poll calls() every 20 ms until predicate(calls) holds; return those calls."""
        deadline = time.monotonic() + timeout
        while True:
            calls = self.calls()
            if predicate(calls):
                return calls
            if time.monotonic() >= deadline:
                raise AssertionError(f"stand-in condition not met within {timeout}s; calls={calls}")
            time.sleep(0.02)

    def stderr(self) -> str:
        """Everything the server process has written to stderr so far."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        self._client.close()
        _terminate(self.process)
        self._stderr.close()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """True once the process answers; False if it exits or the timeout passes first."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                # When something answers, make sure it is this stand-in (still running, with
                # the test endpoints) and not another server that won the race for the port.
                if (
                    client.get("/api/version").status_code == 200
                    and process.poll() is None
                    and client.get("/_standin/open").status_code == 200
                ):
                    return True
            time.sleep(0.02)
    return False


def start_standin(
    *,
    models: list[str] | None = None,
    port: int | None = None,
    delay: float = 0.0,
    memory: int = 0,
    load_seconds: float = 0.0,
) -> StandIn:
    """Start a stand-in server process on a free loopback port (or `port`) and wait for it."""
    attempts = 1 if port is not None else 3  # a picked free port can be taken before we bind
    failure = ""
    for _ in range(attempts):
        chosen = port if port is not None else _free_port()
        command = [sys.executable, str(_SCRIPT), "--host", "127.0.0.1", "--port", str(chosen)]
        if models:
            command += ["--models", ",".join(models)]
        if delay:
            command += ["--delay", str(delay)]
        if memory:
            command += ["--memory", str(memory), "--load-seconds", str(load_seconds)]
        # stderr goes to a file, not a pipe: nobody drains a pipe during a long benchmark.
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the StandIn
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        url = f"http://127.0.0.1:{chosen}"
        if _wait_ready(process, url, timeout=10.0):
            return StandIn(url, process, stderr)
        _terminate(process)
        stderr.seek(0)
        failure = stderr.read().decode(errors="replace")
        stderr.close()
        lowered = failure.lower()
        if "address already in use" not in lowered and "errno 98" not in lowered:
            break
    raise RuntimeError(f"the Ollama stand-in did not start; its stderr:\n{failure}")


if __name__ == "__main__":
    main()
