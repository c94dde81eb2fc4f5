"""Settings: read once, from flags and the environment, into one typed object.

Every flag has an environment variable; a flag given on the command line wins.
The README's settings table lists the same names as `FLAGS` below.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

__version__ = "0.1.0"


Positive = Annotated[float, Meta(gt=0)]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 5000
    ollama_url: str = "http://127.0.0.1:11434"
    data_dir: str = "data"
    # Loading a large model can take minutes, and Ollama sends nothing while it
    # loads: a shorter read timeout would abort the load the gateway asked for.
    timeout: Positive = 600.0
    connect_timeout: Positive = 5.0
    # Seconds between SSE keep-alive comments, so proxies keep an idle stream open.
    keepalive: Positive = 15.0
    # How long a stream waits for Ollama to accept the request before it opens
    # the SSE response anyway: fast failures keep their HTTP status, slow model
    # loads get keep-alive comments.
    open_wait: Annotated[float, Meta(ge=0)] = 1.0
    log_level: str = "info"
    # Access control (see README "Security").
    admin_token: str | None = None
    allowed_hosts: str = ""
    cors_origins: str = ""
    max_body: Annotated[int, Meta(ge=1)] = 1_048_576
    max_prompt: Annotated[int, Meta(ge=1)] = 262_144
    # Limits; 0 means no limit. A key's own limits override the per-key defaults.
    key_rpm: Annotated[int, Meta(ge=0)] = 0
    key_tokens_per_day: Annotated[int, Meta(ge=0)] = 0
    key_streams: Annotated[int, Meta(ge=0)] = 0
    project_rpm: Annotated[int, Meta(ge=0)] = 0
    project_tokens_per_day: Annotated[int, Meta(ge=0)] = 0
    max_streams: Annotated[int, Meta(ge=0)] = 0
    reset_admin_token: bool = False

    @property
    def host_list(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    # Seconds a stream or ask in flight may still run once the gateway is told to stop;
    # after that it ends with a `server_shutdown` error. systemd's stop timeout must be longer.
    grace: Annotated[float, Meta(ge=0, le=3600)] = 10.0
    log_json: bool = False
    # Prompts and answers in the log: off unless asked for, since they may be private.
    log_content: bool = False
    # Usage records older than this many days are deleted; None keeps them forever.
    retention_days: Annotated[float, Meta(gt=0)] | None = None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()


def default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ollama-host"


def ollama_url(value: str) -> str:
    """Read an address the way Ollama reads OLLAMA_HOST: `host:port` or a full URL.

    Ollama's own rule (envconfig.Host): no scheme means http and port 11434; an
    explicit http:// or https:// without a port means 80 or 443.
    """
    value = value.strip().rstrip("/")
    if not value:
        return "http://127.0.0.1:11434"
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest, default_port = "http", value, 11434
    elif scheme in ("http", "https"):
        default_port = 80 if scheme == "http" else 443
    else:
        raise ValueError(f"unsupported scheme {scheme!r} in Ollama address {value!r}")
    parts = urlsplit(f"{scheme}://{rest}")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ValueError(f"bad port in Ollama address {value!r}") from exc
    host = parts.hostname or "127.0.0.1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


# flag, environment variable, settings field, help
FLAGS: tuple[tuple[str, str, str, str], ...] = (
    ("--host", "OLLAMA_GATEWAY_HOST", "host", "address to listen on (default 127.0.0.1)"),
    ("--port", "OLLAMA_GATEWAY_PORT", "port", "port to listen on (default 5000)"),
    (
        "--ollama",
        "OLLAMA_HOST",
        "ollama_url",
        "Ollama server, `host:port` or a URL, as Ollama reads OLLAMA_HOST "
        "(default http://127.0.0.1:11434)",
    ),
    (
        "--data",
        "OLLAMA_GATEWAY_DATA",
        "data_dir",
        "folder for the usage log, keys and tokens (default $XDG_DATA_HOME/ollama-host)",
    ),
    (
        "--timeout",
        "OLLAMA_GATEWAY_TIMEOUT",
        "timeout",
        "seconds to wait for Ollama's next byte; allow for model loads (default 600)",
    ),
    (
        "--connect-timeout",
        "OLLAMA_GATEWAY_CONNECT_TIMEOUT",
        "connect_timeout",
        "seconds to wait for a connection to Ollama (default 5)",
    ),
    (
        "--keepalive",
        "OLLAMA_GATEWAY_KEEPALIVE",
        "keepalive",
        "seconds between SSE keep-alive comments (default 15)",
    ),
    (
        "--open-wait",
        "OLLAMA_GATEWAY_OPEN_WAIT",
        "open_wait",
        "seconds a stream waits for Ollama to accept before opening anyway (default 1)",
    ),
    (
        "--retention-days",
        "OLLAMA_GATEWAY_RETENTION_DAYS",
        "retention_days",
        "delete usage records older than this many days (default: keep them forever)",
    ),
    (
        "--log-level",
        "OLLAMA_GATEWAY_LOG_LEVEL",
        "log_level",
        "debug, info, warning or error (default info)",
    ),
    (
        "--admin-token",
        "OLLAMA_GATEWAY_ADMIN_TOKEN",
        "admin_token",
        "the admin token; prefer the variable, a flag shows in `ps` "
        "(default: made on first start, kept hashed in the data folder)",
    ),
    (
        "--allowed-hosts",
        "OLLAMA_GATEWAY_ALLOWED_HOSTS",
        "allowed_hosts",
        "comma-separated host names clients may use besides localhost and IP addresses",
    ),
    (
        "--cors-origins",
        "OLLAMA_GATEWAY_CORS_ORIGINS",
        "cors_origins",
        "comma-separated browser origins allowed to call the gateway (default: none)",
    ),
    (
        "--max-body",
        "OLLAMA_GATEWAY_MAX_BODY",
        "max_body",
        "largest request body in bytes (default 1 MiB)",
    ),
    (
        "--max-prompt",
        "OLLAMA_GATEWAY_MAX_PROMPT",
        "max_prompt",
        "longest prompt (content + template) in characters (default 262144)",
    ),
    (
        "--key-rpm",
        "OLLAMA_GATEWAY_KEY_RPM",
        "key_rpm",
        "requests per minute per API key (0: no limit)",
    ),
    (
        "--key-tokens-per-day",
        "OLLAMA_GATEWAY_KEY_TOKENS_PER_DAY",
        "key_tokens_per_day",
        "tokens per UTC day per API key (0: no limit)",
    ),
    (
        "--key-streams",
        "OLLAMA_GATEWAY_KEY_STREAMS",
        "key_streams",
        "concurrent streams per API key (0: no limit)",
    ),
    (
        "--project-rpm",
        "OLLAMA_GATEWAY_PROJECT_RPM",
        "project_rpm",
        "requests per minute per project (0: no limit)",
    ),
    (
        "--project-tokens-per-day",
        "OLLAMA_GATEWAY_PROJECT_TOKENS_PER_DAY",
        "project_tokens_per_day",
        "tokens per UTC day per project (0: no limit)",
    ),
    (
        "--max-streams",
        "OLLAMA_GATEWAY_MAX_STREAMS",
        "max_streams",
        "concurrent streams in total (0: no limit)",
    ),
    (
        "--grace",
        "OLLAMA_GATEWAY_GRACE",
        "grace",
        "seconds calls in flight may still run after SIGTERM or Ctrl-C (default 10)",
    ),
    (
        "--log-json",
        "OLLAMA_GATEWAY_LOG_JSON",
        "log_json",
        "write the log as JSON lines, one object per line",
    ),
    (
        "--log-content",
        "OLLAMA_GATEWAY_LOG_CONTENT",
        "log_content",
        "also log each ask's prompt and answer (never its user_key)",
    ),
)

# Fields set by a bare flag (`--log-json`) rather than a value; their variables take 1/0/true/false.
SWITCHES = frozenset(f.name for f in msgspec.structs.fields(Settings) if f.type is bool)


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Ollama Host: a gateway in front of Ollama that streams answers as "
        "Server-Sent Events and records the usage of every call.",
        epilog="Every flag can also be set by the environment variable named in brackets.",
    )
    parser.add_argument("--version", action="version", version=f"ollama-host {__version__}")
    for flag, var, field, text in FLAGS:
        if field in SWITCHES:
            parser.add_argument(
                flag, dest=field, action="store_true", default=None, help=f"{text} [{var}]"
            )
            continue
        parser.add_argument(
            flag, dest=field, metavar=var.removeprefix("OLLAMA_GATEWAY_"), help=f"{text} [{var}]"
        )
    parser.add_argument(
        "--reset-admin-token",
        action="store_true",
        help="make a new admin token (the old one stops working) and show it once",
    )
    args = vars(parser.parse_args(argv))

    raw: dict[str, object] = {}
    for _flag, var, field, _text in FLAGS:
        value = args.get(field)
        if value is None:
            value = env.get(var) or None
        if value is not None:
            raw[field] = value
    raw["reset_admin_token"] = args["reset_admin_token"]
    try:
        raw["ollama_url"] = ollama_url(str(raw.get("ollama_url", "")))
        raw.setdefault("data_dir", str(default_data_dir(env)))
        settings = msgspec.convert(raw, Settings, strict=False)
    except (ValueError, msgspec.ValidationError) as exc:
        parser.error(str(exc))
    if settings.log_level not in ("debug", "info", "warning", "error"):
        parser.error(
            f"--log-level must be debug, info, warning or error, not {settings.log_level!r}"
        )
    return settings
