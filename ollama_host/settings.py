"""Settings: read once, from flags and the environment, into one typed object.

Each setting is declared once, below, as a field of `Settings` with its flag, environment
variable, shown default and help text beside it. The flag parser (`parse_settings`), `--help`
and the README's settings table (`settings_table`, checked by a test) all come from that one
declaration. A flag given on the command line wins over its variable.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from access.keys import MAX_GPU_DAY, MAX_GPU_MONTH
from access.origins import OriginError, parse_patterns
from ollama_host import __version__
from ollama_host.envhost import ollama_url


def setting(
    flag: str,
    env: str | None,
    help: str,
    *,
    shown: str | None = None,
    metavar: str | None = None,
    repeat: bool = False,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> Meta:
    """One setting's declaration: its flag, its variable, how the README shows its default
    (None: the field's default as it is), and the help text both --help and the README show.

    A `repeat` setting is a tuple: its flag may be given several times, and its variable
    holds the values separated by spaces."""
    bounds: dict[str, Any] = {
        name: value for name, value in (("gt", gt), ("ge", ge), ("le", le)) if value is not None
    }
    extra = {"flag": flag, "env": env, "shown": shown, "metavar": metavar, "repeat": repeat}
    meta: Meta = Meta(description=help, extra=extra, **bounds)
    return meta


NONE = "`0` (none)"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: Annotated[str, setting("--host", "OLLAMA_GATEWAY_HOST", "address to listen on")] = (
        "127.0.0.1"
    )
    port: Annotated[
        int, setting("--port", "OLLAMA_GATEWAY_PORT", "port to listen on", ge=0, le=65535)
    ] = 5000
    ollama_url: Annotated[
        str,
        setting(
            "--ollama",
            "OLLAMA_HOST",
            "the Ollama server: `host:port` or a URL, read exactly as Ollama reads it (no "
            "scheme: http and port 11434; `http://host` alone: port 80; `0.0.0.0`: this machine)",
            metavar="URL",
        ),
    ] = "http://127.0.0.1:11434"
    # Several model servers (upstreams/config.py); without any, the one of --ollama.
    upstream: Annotated[
        tuple[str, ...],
        setting(
            "--upstream",
            "OLLAMA_GATEWAY_UPSTREAM",
            "a model server behind the gateway, instead of `--ollama`; repeat it for several. "
            "Options after the URL, comma-separated: `kind=ollama` or `openai` (any "
            "OpenAI-compatible server: llama.cpp's llama-server, vLLM, LM Studio), `cap=N` "
            "calls at once (the rest wait in the gateway), `weight=W`, `models=a|b` (only "
            "these), `key_env=VAR` (the variable holding its API key), `first_byte=S` (its own "
            "`--first-byte-timeout`). Example: "
            "`gpu1=http://10.0.0.5:11434,cap=4`; the variable takes several, space-separated",
            shown="none",
            metavar="NAME=URL[,OPTION=VALUE...]",
            repeat=True,
        ),
    ] = ()
    upstreams_file: Annotated[
        str | None,
        setting(
            "--upstreams",
            "OLLAMA_GATEWAY_UPSTREAMS",
            "a TOML file of upstreams, a table `[upstream.NAME]` each with `url` and the "
            "options of `--upstream` (`models` a list); with `--upstream` too, both count",
            shown="none",
            metavar="FILE",
        ),
    ] = None
    embedded_model: Annotated[
        bool,
        setting(
            "--embedded-model",
            "OLLAMA_GATEWAY_EMBEDDED_MODEL",
            "with no upstream configured (no `--ollama`, `--upstream`, `--upstreams` nor "
            "`OLLAMA_HOST`) and nothing answering at Ollama's default address, run the "
            "embedded model as the upstream: SmolLM2-135M as `smollm2:135m` under llama.cpp's "
            "`llama-server` (built once by `scripts/llama-server`), a child process started "
            "and stopped with the gateway. `scripts/run` turns it on",
        ),
    ] = False
    health_interval: Annotated[
        float,
        setting(
            "--health-interval",
            "OLLAMA_GATEWAY_HEALTH_INTERVAL",
            "seconds between health checks of each upstream (its models, which are loaded); "
            "one that is down is checked every second until it answers",
            metavar="S",
            gt=0,
        ),
    ] = 5.0
    upstream_queue: Annotated[
        int,
        setting(
            "--upstream-queue",
            "OLLAMA_GATEWAY_UPSTREAM_QUEUE",
            "calls that may wait in the gateway for a free slot when every upstream with "
            "their model is at its cap (503 past it); each waits at most `--timeout`",
            metavar="N",
            ge=0,
        ),
    ] = 512
    # -- the fair queue (queueing/, docs/queue.md) --
    queue_per_key: Annotated[
        int,
        setting(
            "--queue-per-key",
            "OLLAMA_GATEWAY_QUEUE_PER_KEY",
            "calls one key (or project, see `--fair-share`) may have waiting for a slot; past "
            "it 429 with a Retry-After from the rate the queue drains",
            metavar="N",
            ge=0,
        ),
    ] = 256
    queue_order: Annotated[
        Literal["fair", "fifo"],
        setting(
            "--queue-order",
            "OLLAMA_GATEWAY_QUEUE_ORDER",
            "the order calls waiting for a slot are served in: `fair` (interactive before "
            "batch, then deficit round-robin across keys by weight) or `fifo` (arrival order)",
            metavar="ORDER",
        ),
    ] = "fair"
    fair_share: Annotated[
        Literal["key", "project"],
        setting(
            "--fair-share",
            "OLLAMA_GATEWAY_FAIR_SHARE",
            "what the fair queue divides a busy upstream among: `key` (each API key; calls "
            "without one by their project) or `project` (each project label)",
            metavar="BY",
        ),
    ] = "key"
    allow_cloud: Annotated[
        bool,
        setting(
            "--allow-cloud",
            "OLLAMA_GATEWAY_ALLOW_CLOUD",
            "allow cloud models (`:cloud`, `-cloud` tags), which Ollama runs on ollama.com "
            "under its own account; refused otherwise",
        ),
    ] = False
    data_dir: Annotated[
        str,
        setting(
            "--data",
            "OLLAMA_GATEWAY_DATA",
            "folder for the usage log, API keys and token hashes",
            shown="`$XDG_DATA_HOME/ollama-host` (`~/.local/share/ollama-host`)",
            metavar="DIR",
        ),
    ] = "data"
    store: Annotated[
        str | None,
        setting(
            "--store",
            "OLLAMA_GATEWAY_STORE",
            "keep usage records, API keys and the admin token's hash in PostgreSQL, shared by "
            "every gateway given the same address: `postgresql://USER:PASSWORD@HOST:PORT/DB` "
            "(the `postgres` extra; prefer the variable: a flag shows in `ps`)",
            shown="TinyDB files in `--data`",
            metavar="URL",
        ),
    ] = None
    redis: Annotated[
        str | None,
        setting(
            "--redis",
            "OLLAMA_GATEWAY_REDIS",
            "count requests per minute, tokens per day and open streams, and keep stream "
            "tickets, in Redis, shared by every gateway given the same address: "
            "`redis://HOST:PORT/DB` (the `redis` extra)",
            shown="in each gateway's memory",
            metavar="URL",
        ),
    ] = None
    workers: Annotated[
        int,
        setting(
            "--workers",
            "OLLAMA_GATEWAY_WORKERS",
            "gateway processes serving the one port; more than 1 needs `--store`",
            metavar="N",
            ge=1,
            le=64,
        ),
    ] = 1
    # Loading a large model can take minutes, and Ollama sends nothing while it loads: a
    # shorter read timeout would abort the load the gateway asked for.
    timeout: Annotated[
        float,
        setting(
            "--timeout",
            "OLLAMA_GATEWAY_TIMEOUT",
            "seconds to wait for Ollama's next byte; long, because loading a big model takes "
            "minutes and Ollama sends nothing meanwhile",
            metavar="S",
            gt=0,
        ),
    ] = 600.0
    connect_timeout: Annotated[
        float,
        setting(
            "--connect-timeout",
            "OLLAMA_GATEWAY_CONNECT_TIMEOUT",
            "seconds to wait for a connection to Ollama",
            metavar="S",
            gt=0,
        ),
    ] = 5.0
    # Under the 5 s after which uvicorn (vLLM), llama-server and Node close an idle
    # connection: reusing one as the server closes it loses the call (http_transport).
    upstream_idle: Annotated[
        float,
        setting(
            "--upstream-idle",
            "OLLAMA_GATEWAY_UPSTREAM_IDLE",
            "seconds an idle connection to an upstream is kept for the next call, from the "
            "last byte the upstream sent; keep it under the upstream's own keep-alive "
            "timeout (5 s for vLLM and llama-server), or a call may be sent just as the "
            "server closes the connection; `0`: a new connection for every call",
            metavar="S",
            ge=0,
        ),
    ] = 4.0
    # -- a hung upstream's hold on a call --------------------------------------------------
    # Ollama sends nothing while it loads a model and reads the prompt, so the first byte of
    # an answer waits for both: 300 s is Ollama's own bound on a load that makes no progress
    # (OLLAMA_LOAD_TIMEOUT, 5 minutes), and covers a 40 GB model read from a disk at 150 MB/s
    # (docs/upstreams.md). Half the --timeout default: a hung server frees its calls sooner.
    first_byte_timeout: Annotated[
        float,
        setting(
            "--first-byte-timeout",
            "OLLAMA_GATEWAY_FIRST_BYTE_TIMEOUT",
            "seconds a call waits for the first byte of an upstream's answer (a cold model "
            "load and the prompt's reading come before it) before it is tried on another "
            "upstream with the model, if nothing went back to the client yet; at most "
            "`--timeout`; an upstream's `first_byte=S` option sets its own",
            metavar="S",
            gt=0,
        ),
    ] = 300.0
    # Seconds between SSE keep-alive comments, so proxies keep an idle stream open.
    keepalive: Annotated[
        float,
        setting(
            "--keepalive",
            "OLLAMA_GATEWAY_KEEPALIVE",
            "seconds between SSE keep-alive comments on an idle stream",
            metavar="S",
            gt=0,
        ),
    ] = 15.0
    # Fast failures keep their HTTP status; slow model loads get keep-alive comments.
    open_wait: Annotated[
        float,
        setting(
            "--open-wait",
            "OLLAMA_GATEWAY_OPEN_WAIT",
            "how long a stream waits for Ollama to accept the request before the SSE response "
            "opens anyway (see below)",
            metavar="S",
            ge=0,
        ),
    ] = 1.0
    log_level: Annotated[
        str,
        setting("--log-level", "OLLAMA_GATEWAY_LOG_LEVEL", "`debug`, `info`, `warning` or `error`"),
    ] = "info"
    admin_token: Annotated[
        str | None,
        setting(
            "--admin-token",
            "OLLAMA_GATEWAY_ADMIN_TOKEN",
            "the admin token (prefer the variable: a flag shows in `ps`); never written down",
            shown="made on first start",
        ),
    ] = None
    allowed_hosts: Annotated[
        str,
        setting(
            "--allowed-hosts",
            "OLLAMA_GATEWAY_ALLOWED_HOSTS",
            "host names clients may use, besides `localhost` and IP addresses "
            "(comma-separated; `*` turns the check off)",
            shown="none",
        ),
    ] = ""
    cors_origins: Annotated[
        str,
        setting(
            "--cors-origins",
            "OLLAMA_GATEWAY_CORS_ORIGINS",
            "browser origins allowed to ask (every front), comma-separated patterns as "
            "`OLLAMA_ORIGINS` takes them: `https://app.example`, `http://192.168.1.5:*`, "
            "`chrome-extension://*`, `*`; the Ollama, OpenAI and Anthropic fronts also take "
            "Ollama's defaults (`http://localhost:*`, `http://127.0.0.1:*`, `app://*`, "
            "`file://*`, ...). "
            "Never the admin API or the dashboard",
            shown="none",
        ),
    ] = ""
    # Apart from --cors-origins, so that no pattern meant for asking (a `*`, say) can ever
    # open the usage log and the keys to another site's pages.
    admin_origins: Annotated[
        str,
        setting(
            "--admin-origins",
            "OLLAMA_GATEWAY_ADMIN_ORIGINS",
            "browser origins allowed to call the admin API and the dashboard from another "
            "origin, with the admin cookie (patterns as for `--cors-origins`)",
            shown="none",
        ),
    ] = ""
    max_body: Annotated[
        int,
        setting(
            "--max-body",
            "OLLAMA_GATEWAY_MAX_BODY",
            "largest request body in bytes (413 past it)",
            ge=1,
        ),
    ] = 1_048_576
    max_headers: Annotated[
        int,
        setting(
            "--max-headers",
            "OLLAMA_GATEWAY_MAX_HEADERS",
            "largest request line plus headers, in bytes (431 past it); nginx's default "
            "(4 buffers of 8 KB)",
            ge=1024,
        ),
    ] = 32_768
    max_prompt: Annotated[
        int,
        setting(
            "--max-prompt",
            "OLLAMA_GATEWAY_MAX_PROMPT",
            "longest prompt, content plus template, in characters (413 past it)",
            ge=1,
        ),
    ] = 262_144
    # Bounds on what one call may make the gateway hold: past each, a clear error,
    # a record that says why, and memory that stays flat.
    max_upstream_line: Annotated[
        int,
        setting(
            "--max-upstream-line",
            "OLLAMA_GATEWAY_MAX_UPSTREAM_LINE",
            "longest line of a streamed answer the gateway reads from an upstream, in bytes "
            "(past it: an `upstream_bad_response` error)",
            ge=1024,
        ),
    ] = 4 << 20
    max_upstream_body: Annotated[
        int,
        setting(
            "--max-upstream-body",
            "OLLAMA_GATEWAY_MAX_UPSTREAM_BODY",
            "largest whole (non-streamed) answer the gateway reads from an upstream, in bytes "
            "(past it: an `upstream_bad_response` error)",
            ge=1024,
        ),
    ] = 64 << 20
    max_record_output: Annotated[
        int,
        setting(
            "--max-record-output",
            "OLLAMA_GATEWAY_MAX_RECORD_OUTPUT",
            "characters of an answer (and of its thinking) a usage record keeps; a longer one "
            "keeps its head and says `output_truncated` with the full `output_chars`",
            ge=1,
        ),
    ] = 1 << 20
    stream_buffer: Annotated[
        int,
        setting(
            "--stream-buffer",
            "OLLAMA_GATEWAY_STREAM_BUFFER",
            "bytes of an upstream's answer the gateway holds unread for a slow client; past "
            "it, it stops reading the upstream until the client catches up",
            ge=4096,
        ),
    ] = 256 << 10
    send_timeout: Annotated[
        float,
        setting(
            "--send-timeout",
            "OLLAMA_GATEWAY_SEND_TIMEOUT",
            "seconds a stream waits for a client that reads nothing before it ends the stream "
            "(recorded `cancelled`, `client_stalled`)",
            metavar="S",
            gt=0,
        ),
    ] = 60.0
    # Resumable streams (routes/resuming.py): the seed's SSE streams that survive a dropped
    # connection. Both bound what a client that left may still make the gateway hold.
    resume_window: Annotated[
        float,
        setting(
            "--resume-window",
            "OLLAMA_GATEWAY_RESUME_WINDOW",
            "seconds a resumable stream (the seed's `GET ask_async`, or one asked with "
            "`resumable`) keeps generating after its client left, for a reconnect with "
            "`Last-Event-ID`; "
            "nobody back by then: the upstream is closed and the call recorded `cancelled`",
            metavar="S",
            gt=0,
            le=3600,
        ),
    ] = 15.0
    resume_buffer: Annotated[
        int,
        setting(
            "--resume-buffer",
            "OLLAMA_GATEWAY_RESUME_BUFFER",
            "bytes of a resumable stream's events the gateway keeps for a reconnect; past it, "
            "events a client was already sent are let go (a resume from before them gets an "
            "`events_dropped` error), and while no client is there the upstream is not read "
            "until one comes back",
            ge=4096,
        ),
    ] = 1 << 20
    # Client connections (ollama_host/connections.py): they cover receiving a request and
    # waiting between requests, never an answer going out.
    header_timeout: Annotated[
        float,
        setting(
            "--header-timeout",
            "OLLAMA_GATEWAY_HEADER_TIMEOUT",
            "seconds a request's headers may take to arrive, from its first byte (408 past it)",
            metavar="S",
            gt=0,
        ),
    ] = 10.0
    body_timeout: Annotated[
        float,
        setting(
            "--body-timeout",
            "OLLAMA_GATEWAY_BODY_TIMEOUT",
            "seconds a request's whole body may take to arrive once its headers are in "
            "(408 past it)",
            metavar="S",
            gt=0,
        ),
    ] = 30.0
    idle_timeout: Annotated[
        float,
        setting(
            "--idle-timeout",
            "OLLAMA_GATEWAY_IDLE_TIMEOUT",
            "seconds a connection may wait for a request, its first or its next, before it "
            "is closed",
            metavar="S",
            gt=0,
        ),
    ] = 10.0
    max_connections: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        setting(
            "--max-connections",
            "OLLAMA_GATEWAY_MAX_CONNECTIONS",
            "client connections open at once; past it the oldest connection waiting for a "
            "request is closed to make room, and if none is waiting a new connection is "
            "answered 503 `too_many_connections` and closed before anything is read",
            shown="min(1024, (open-files limit − 64) / 2)",
            metavar="N",
        ),
    ] = None
    # Limits; 0 means no limit. A key's own limits override the per-key defaults.
    key_rpm: Annotated[
        int,
        setting(
            "--key-rpm",
            "OLLAMA_GATEWAY_KEY_RPM",
            "requests per minute per API key",
            shown=NONE,
            ge=0,
        ),
    ] = 0
    key_tokens_per_day: Annotated[
        int,
        setting(
            "--key-tokens-per-day",
            "OLLAMA_GATEWAY_KEY_TOKENS_PER_DAY",
            "tokens per UTC day per API key",
            shown=NONE,
            ge=0,
        ),
    ] = 0
    key_streams: Annotated[
        int,
        setting(
            "--key-streams",
            "OLLAMA_GATEWAY_KEY_STREAMS",
            "streams open at once per API key",
            shown=NONE,
            ge=0,
        ),
    ] = 0
    project_rpm: Annotated[
        int,
        setting(
            "--project-rpm",
            "OLLAMA_GATEWAY_PROJECT_RPM",
            "requests per minute per `project`",
            shown=NONE,
            ge=0,
        ),
    ] = 0
    project_tokens_per_day: Annotated[
        int,
        setting(
            "--project-tokens-per-day",
            "OLLAMA_GATEWAY_PROJECT_TOKENS_PER_DAY",
            "tokens per UTC day per `project`",
            shown=NONE,
            ge=0,
        ),
    ] = 0
    # GPU budgets (access/limits.py), in GPU-seconds as records count them; 0 means none. A
    # key's own budgets override the per-key defaults.
    key_gpu_seconds_per_day: Annotated[
        float,
        setting(
            "--key-gpu-seconds-per-day",
            "OLLAMA_GATEWAY_KEY_GPU_SECONDS_PER_DAY",
            "GPU-seconds per UTC day per API key",
            shown=NONE,
            metavar="S",
            ge=0,
            le=MAX_GPU_DAY,
        ),
    ] = 0
    key_gpu_seconds_per_month: Annotated[
        float,
        setting(
            "--key-gpu-seconds-per-month",
            "OLLAMA_GATEWAY_KEY_GPU_SECONDS_PER_MONTH",
            "GPU-seconds per UTC calendar month per API key",
            shown=NONE,
            metavar="S",
            ge=0,
            le=MAX_GPU_MONTH,
        ),
    ] = 0
    project_gpu_seconds_per_day: Annotated[
        float,
        setting(
            "--project-gpu-seconds-per-day",
            "OLLAMA_GATEWAY_PROJECT_GPU_SECONDS_PER_DAY",
            "GPU-seconds per UTC day per `project`",
            shown=NONE,
            metavar="S",
            ge=0,
            le=MAX_GPU_DAY,
        ),
    ] = 0
    project_gpu_seconds_per_month: Annotated[
        float,
        setting(
            "--project-gpu-seconds-per-month",
            "OLLAMA_GATEWAY_PROJECT_GPU_SECONDS_PER_MONTH",
            "GPU-seconds per UTC calendar month per `project`",
            shown=NONE,
            metavar="S",
            ge=0,
            le=MAX_GPU_MONTH,
        ),
    ] = 0
    max_streams: Annotated[
        int,
        setting(
            "--max-streams",
            "OLLAMA_GATEWAY_MAX_STREAMS",
            "streams open at once, in total",
            shown=NONE,
            ge=0,
        ),
    ] = 0
    # Usage records older than this many days are deleted; None keeps them forever.
    retention_days: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        setting(
            "--retention-days",
            "OLLAMA_GATEWAY_RETENTION_DAYS",
            "delete usage records older than N days",
            shown="keep forever",
            metavar="N",
        ),
    ] = None
    # Seconds a call in flight may still run once the gateway is told to stop; after that it
    # ends with a `server_shutdown` error. systemd's stop timeout must be longer.
    grace: Annotated[
        float,
        setting(
            "--grace",
            "OLLAMA_GATEWAY_GRACE",
            "seconds calls in flight may still run after SIGTERM or Ctrl-C",
            metavar="S",
            ge=0,
            le=3600,
        ),
    ] = 10.0
    log_json: Annotated[
        bool, setting("--log-json", "OLLAMA_GATEWAY_LOG_JSON", "write the log as JSON lines")
    ] = False
    # Prompts and answers in the log: off unless asked for, since they may be private.
    log_content: Annotated[
        bool,
        setting(
            "--log-content",
            "OLLAMA_GATEWAY_LOG_CONTENT",
            "also log each ask's prompt and answer (never a key)",
        ),
    ] = False
    # -- monitoring: /metrics, traces ---------------------------------------------------------
    no_metrics: Annotated[
        bool,
        setting(
            "--no-metrics",
            "OLLAMA_GATEWAY_NO_METRICS",
            "count nothing for Prometheus and answer /metrics with 404 (counting is on when the "
            "`metrics` extra, prometheus_client, is installed)",
        ),
    ] = False
    metrics_port: Annotated[
        int,
        setting(
            "--metrics-port",
            "OLLAMA_GATEWAY_METRICS_PORT",
            "serve /metrics without a token on 127.0.0.1 at this port instead of behind the "
            "admin token on the main port; `0` keeps it on the main port",
            shown=NONE,
            metavar="PORT",
            ge=0,
            le=65535,
        ),
    ] = 0
    otlp: Annotated[
        str | None,
        setting(
            "--otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "export a trace span per call to this OpenTelemetry collector (OTLP over HTTP, "
            "e.g. `http://127.0.0.1:4318`; the `otel` extra)",
            shown="off",
            metavar="URL",
        ),
    ] = None
    otlp_content: Annotated[
        bool,
        setting(
            "--otlp-content",
            "OLLAMA_GATEWAY_OTLP_CONTENT",
            "also put each call's prompt and answer in its span (off: they may be private)",
        ),
    ] = False
    model_options: Annotated[
        tuple[str, ...],
        setting(
            "--model-options",
            "OLLAMA_GATEWAY_MODEL_OPTIONS",
            "options pinned for one model, replacing what callers ask, so that no client's "
            "`num_ctx` or `keep_alive` makes it reload or unload: "
            "`llama3,num_ctx=8192,keep_alive=30m` (Ollama's option names; `stop` values "
            "separated by `|`); also `[model.NAME]` tables in the `--upstreams` file",
            shown="none",
            metavar="MODEL,OPTION=VALUE[,...]",
            repeat=True,
        ),
    ] = ()
    reset_admin_token: Annotated[
        bool,
        setting(
            "--reset-admin-token",
            None,
            "make a new admin token and show it once; the old one stops working",
            shown="",
        ),
    ] = False

    @property
    def host_list(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()


class Declared(msgspec.Struct, frozen=True):
    """A setting as declared: its field, flag, variable, default, and texts."""

    field: str
    flag: str
    env: str | None
    help: str
    shown: str | None
    metavar: str | None
    default: Any
    switch: bool
    repeat: bool


def declared() -> Iterator[Declared]:
    """Every setting, in declaration order."""
    return iter(_declarations())


@functools.cache
def _declarations() -> tuple[Declared, ...]:
    # Read once: resolving Settings' annotations (get_type_hints) costs more than the
    # rest of parse_settings, and they never change.
    hints = get_type_hints(Settings, include_extras=True)
    items: list[Declared] = []
    for field in msgspec.structs.fields(Settings):
        hint = hints[field.name]
        assert get_origin(hint) is Annotated, field.name
        meta = next(m for m in get_args(hint)[1:] if isinstance(m, Meta))
        extra = meta.extra or {}
        items.append(
            Declared(
                field=field.name,
                flag=extra["flag"],
                env=extra["env"],
                help=meta.description or "",
                shown=extra["shown"],
                metavar=extra["metavar"],
                default=field.default,
                switch=get_args(hint)[0] is bool,
                repeat=extra["repeat"],
            )
        )
    return tuple(items)


def _shown_default(item: Declared) -> str:
    if item.shown is not None:
        return item.shown
    if isinstance(item.default, float) and item.default.is_integer():
        return f"`{int(item.default)}`"
    return f"`{item.default}`"


def settings_table() -> str:
    """The README's settings table, made from the declarations."""
    lines = ["| flag | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for item in declared():
        flag = f"`{item.flag} {item.metavar}`" if item.metavar else f"`{item.flag}`"
        env = f"`{item.env}`" if item.env else ""
        # A switch is off unless given; one without a variable has no default to show.
        switch_default = "off" if item.env is not None else ""
        default = switch_default if item.switch else _shown_default(item)
        meaning = f"{item.help} (repeatable)" if item.repeat else item.help
        cells = (flag, env, default, meaning)
        lines.append("|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|")
    lines.append("| `--version` | | | print the version and exit |")
    return "\n".join(lines) + "\n"


def default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ollama-host"


def _help(item: Declared) -> str:
    default = "" if item.switch else f" (default {_shown_default(item).replace('`', '')})"
    text = item.help.replace("`", "")
    return f"{text}{default} [{item.env}]" if item.env else f"{text}{default}"


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is told in one line and a hint: its usage of every flag (23
    lines) came first and hid the line that matters."""

    def error(self, message: str) -> typing.NoReturn:
        hint = f"Run `{self.prog} --help` for every setting."
        self.exit(2, f"{self.prog}: error: {message}\n{hint}\n")


def _named(message: str, items: list[Declared]) -> str:
    """msgspec's message about `$.field`, naming the flag instead (`--port: Expected ...`)."""
    text, sep, where = message.rpartition(" - at `$.")
    field = where.rstrip("`").split(".")[0].split("[")[0]
    for item in items:
        if sep and item.field == field:
            return f"{item.flag}: {text}"
    return message


def otlp_problem(url: str) -> str | None:
    """What is wrong with --otlp URL (or OTEL_EXPORTER_OTLP_ENDPOINT), if anything."""
    if not url.startswith(("http://", "https://")):
        return (
            f"--otlp must be the collector's OTLP/HTTP address, such as "
            f"http://127.0.0.1:4318, not {url!r}"
        )
    import importlib.util

    try:
        found = importlib.util.find_spec("opentelemetry.sdk") and importlib.util.find_spec(
            "opentelemetry.exporter.otlp.proto.http"
        )
    except ImportError:  # a parent package is missing
        found = None
    if not found:
        return (
            "--otlp needs the OpenTelemetry SDK and its OTLP exporter: "
            "pip install 'ollama-host[otel]'"
        )
    return None


def program_name(argv0: str | None = None) -> str:
    """How the gateway was started, as its usage lines should say: `python app.py` in a
    checkout, else `ollama-host`, the installed command (`python -m ollama_host` runs app.py,
    which pip puts in site-packages, where a user has no app.py to run)."""
    path = Path(sys.argv[0] if argv0 is None else argv0)
    if path.name == "ollama-host":
        return "ollama-host"
    if path.name == "app.py" and not (path.parent / "pyproject.toml").is_file():
        return "ollama-host"
    return "python app.py"


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if env is None else env
    prog = program_name()
    parser = _Parser(
        prog=prog,
        description="Ollama Host: a gateway in front of Ollama that streams answers as "
        "Server-Sent Events and records the usage of every call.",
        epilog="Every flag can also be set by the environment variable named in brackets; "
        f"a flag wins over its variable. Several model servers: {prog} "
        "--upstream gpu1=http://10.0.0.5:11434,cap=4 "
        "--upstream gpu2=http://10.0.0.6:8080,kind=openai,models=llama3|qwen,key_env=GPU2_KEY",
    )
    parser.add_argument("--version", action="version", version=f"ollama-host {__version__}")
    items = list(declared())
    for item in items:
        if item.switch:
            parser.add_argument(
                item.flag, dest=item.field, action="store_true", default=None, help=_help(item)
            )
        elif item.repeat:
            parser.add_argument(
                item.flag, dest=item.field, action="append", metavar=item.metavar, help=_help(item)
            )
        else:
            metavar = item.metavar or (item.env or item.field).removeprefix("OLLAMA_GATEWAY_")
            parser.add_argument(item.flag, dest=item.field, metavar=metavar, help=_help(item))
    args = vars(parser.parse_args(argv))

    raw: dict[str, object] = {}
    for item in items:
        value = args.get(item.field)
        if value is None and item.env is not None:
            value = env.get(item.env) or None
            if value is not None and item.repeat:
                value = value.split()
        if value is not None:
            raw[item.field] = value
    try:
        raw["ollama_url"] = ollama_url(str(raw.get("ollama_url", "")))
        raw.setdefault("data_dir", str(default_data_dir(env)))
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        parser.error(_named(str(exc), items))
    except ValueError as exc:
        parser.error(str(exc))
    if settings.log_level not in ("debug", "info", "warning", "error"):
        parser.error(
            f"--log-level must be debug, info, warning or error, not {settings.log_level!r}"
        )
    try:
        parse_patterns(settings.cors_origins, "--cors-origins")
        parse_patterns(settings.admin_origins, "--admin-origins")
    except OriginError as exc:
        parser.error(str(exc))
    if settings.otlp is not None:
        problem = otlp_problem(settings.otlp)
        if problem:
            parser.error(problem)
    several = bool(settings.upstream or settings.upstreams_file)
    if several and args.get("ollama_url") is not None:
        parser.error("--ollama names the one Ollama; with --upstream or --upstreams, name it there")
    # Checked here, so that a bad upstream stops the start with a message naming the flag.
    from upstreams.config import ConfigError, specs

    try:
        specs(settings.upstream, settings.upstreams_file, settings.ollama_url, env)
    except ConfigError as exc:
        parser.error(str(exc))
    # After the upstreams: a file that is no TOML is said so by them.
    from calls.options import OptionsError, Pinned

    try:
        Pinned.of(settings.model_options, settings.upstreams_file)
    except OptionsError as exc:
        parser.error(str(exc))
    # The embedded model stands in only where no upstream is named at all.
    named = several or args.get("ollama_url") is not None or bool(env.get("OLLAMA_HOST"))
    if settings.embedded_model and named:
        settings = msgspec.structs.replace(settings, embedded_model=False)
    return settings
