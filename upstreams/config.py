"""Which model servers the gateway asks: `--upstream` flags, a TOML file, or OLLAMA_HOST.

    --upstream gpu1=http://10.0.0.5:11434
    --upstream gpu2=http://10.0.0.6:8080,kind=openai,cap=4,weight=2,models=llama3|qwen,key_env=GPU2_KEY
    --upstream gpu3=http://10.0.0.7:11434,first_byte=900

or, with `--upstreams upstreams.toml`:

    [upstream.gpu1]
    url = "http://10.0.0.5:11434"
    cap = 4

    [upstream.gpu2]
    url = "http://10.0.0.6:8080"
    kind = "openai"
    models = ["llama3", "qwen"]
    key_env = "GPU2_KEY"

Without either, the one Ollama of `--ollama` / OLLAMA_HOST, named `ollama`. An upstream's own
API key is a secret: only the NAME of the environment variable holding it is configured, the
key is read from the environment at start and held in memory by that upstream alone.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from calls.models import canonical
from calls.types import MODEL_PATTERN

from .kinds import KINDS

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODEL = re.compile(MODEL_PATTERN)
OPTIONS = ("kind", "cap", "weight", "models", "key_env", "first_byte", "gpus", "cost")
# More GPUs than any one server has: a typo, not a machine.
MAX_GPUS = 4096
# A price per GPU-hour beyond this is a typo (cents for dollars, or a missing point).
MAX_COST = 1_000_000.0


class UpstreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One configured upstream."""

    name: str
    url: str
    kind: str = "ollama"
    # Calls it runs at once; the rest wait in the gateway. None: no cap.
    cap: int | None = None
    weight: float = 1.0
    # Only these models go there (as Ollama names them); None: whatever it has.
    models: tuple[str, ...] | None = None
    # The environment variable holding the upstream's own API key.
    key_env: str | None = None
    # Seconds a call waits there for a first byte before it is tried elsewhere; None: the
    # gateway's --first-byte-timeout.
    first_byte: float | None = None
    # GPU time (upstreams.gputime): how many GPUs the server has, so that its calls are never
    # charged more than gpus x the time; and its price per GPU-hour, None: not priced.
    gpus: int = 1
    cost: float | None = None

    def key(self, env: Mapping[str, str]) -> str | None:
        """The API key for this upstream, from the environment; never stored in the spec."""
        return env.get(self.key_env) if self.key_env else None

    def allowed(self) -> frozenset[str] | None:
        return None if self.models is None else frozenset(canonical(m) for m in self.models)


class ConfigError(ValueError):
    """An upstream that cannot be used as configured; the message names where it came from."""


def _url(text: str, where: str, kind: object) -> str:
    """The URL as the upstream is asked at: scheme, host, port, and for the openai kind the
    path its API is served under (`/v1`, or a proxy's prefix). An Ollama is asked at its root,
    as its paths are `/api/...`: a path on one (`/v1`, its OpenAI-compatible API) is the
    usual mistake, refused here. No kind takes a query or a fragment."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise ConfigError(
            f"{where}: the URL must be http://HOST[:PORT] or https://..., not {text!r}"
        )
    rest, hash_, fragment = rest.partition("#")
    if hash_:
        raise ConfigError(f"{where}: the URL has a fragment {'#' + fragment!r}; remove it")
    rest, question, query = rest.partition("?")
    if question:
        raise ConfigError(f"{where}: the URL has a query {'?' + query!r}; remove it")
    hostport, slash, path = rest.partition("/")
    if slash and kind != "openai":
        root = f"{scheme}://{hostport}"
        raise ConfigError(
            f"{where}: the URL has a path {'/' + path!r}, but an Ollama is asked at its root "
            f"({root}); an OpenAI-compatible API under a path is an upstream of kind=openai"
        )
    if "@" in hostport:
        raise ConfigError(f"{where}: no credentials in the URL; name a variable with key_env")
    try:
        port = httpx_port(hostport)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc} in {text!r}") from None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}: bad port in {text!r}")
    return f"{scheme}://{hostport}{slash}{path}".rstrip("/")


def httpx_port(hostport: str) -> int | None:
    """The explicit port of `host:port` or `[v6]:port`, None without one."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("a bracket is not closed")
        rest = hostport[end + 1 :]
        if not rest:
            return None
        if not rest.startswith(":"):
            raise ValueError("unexpected text after the address")
        port = rest[1:]
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep:
            return None
        if not host or ":" in host:
            raise ValueError("a bad host")
    if not port.isdigit():
        raise ValueError(f"a bad port {port!r}")
    return int(port)


def _spec(name: str, values: dict[str, Any], where: str) -> UpstreamSpec:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: the name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)"
        )
    unknown = sorted(set(values) - {"url", *OPTIONS})
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r}; known: {', '.join(OPTIONS)}")
    if "url" not in values:
        raise ConfigError(f"{where}: no url")
    _gpu_options(values, where)
    url = values["url"]
    if not isinstance(url, str):
        raise ConfigError(f"{where}: the url must be a string")
    try:
        spec = msgspec.convert(
            {**values, "name": name, "url": _url(url, where, values.get("kind", "ollama"))},
            UpstreamSpec,
            strict=False,
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if spec.cap is not None and spec.cap < 1:
        raise ConfigError(f"{where}: cap must be at least 1")
    if not math.isfinite(spec.weight):
        # inf would take every call, and nan compares false with everything.
        raise ConfigError(f"{where}: weight must be a finite number more than 0")
    if not spec.weight > 0:
        raise ConfigError(f"{where}: weight must be more than 0")
    for model in spec.models or ():
        if not _MODEL.fullmatch(model):
            raise ConfigError(f"{where}: {model!r} is not a model name")
    if spec.first_byte is not None and not (math.isfinite(spec.first_byte) and spec.first_byte > 0):
        raise ConfigError(f"{where}: first_byte must be a number of seconds more than 0")
    if spec.key_env is not None and not _ENV_NAME.fullmatch(spec.key_env):
        raise ConfigError(f"{where}: key_env must name an environment variable")
    return spec


def _gpu_options(values: dict[str, Any], where: str) -> None:
    """`gpus` and `cost`, checked with messages that say what is wanted (msgspec's would
    name `$.cost`, not what a price is)."""
    if "cost" in values:
        cost = values["cost"]
        try:
            price = float(cost) if isinstance(cost, (str, int, float)) else None
        except ValueError:
            price = None
        if isinstance(cost, bool) or price is None or not 0.0 <= price <= MAX_COST:
            raise ConfigError(
                f"{where}: cost must be a price per GPU-hour, a number from 0 to "
                f"{MAX_COST:,.0f} (cost=2.50), not {cost!r}"
            )
        values["cost"] = price
    if "gpus" in values:
        gpus = values["gpus"]
        try:
            count = int(gpus) if isinstance(gpus, (str, int)) else None
        except ValueError:
            count = None
        if isinstance(gpus, bool) or count is None or not 1 <= count <= MAX_GPUS:
            raise ConfigError(
                f"{where}: gpus must be how many GPUs the server has, a whole number from 1 "
                f"to {MAX_GPUS}, not {gpus!r}"
            )
        values["gpus"] = count


def parse_flag(text: str) -> UpstreamSpec:
    """One `--upstream NAME=URL[,OPTION=VALUE...]`; `models` separated by `|`."""
    where = f"--upstream {text!r}"
    name, sep, rest = text.strip().partition("=")
    if not sep or not rest:
        raise ConfigError(f"{where}: expected NAME=URL[,OPTION=VALUE...]")
    url, *options = rest.split(",")
    values: dict[str, Any] = {"url": url}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"{where}: expected OPTION=VALUE, not {option!r}")
        if key in values:
            raise ConfigError(f"{where}: {key!r} is given twice")
        values[key] = tuple(value.split("|")) if key == "models" else value.strip()
    return _spec(name.strip(), values, where)


def load_file(path: Path) -> list[UpstreamSpec]:
    """The upstreams of a TOML file: a table `[upstream.NAME]` per upstream."""
    where = f"--upstreams {path}"
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not TOML: {exc}") from None
    # [model.NAME]: options pinned per model (calls/options.py reads those).
    extra = sorted(set(data) - {"upstream", "model"})
    if extra:
        raise ConfigError(
            f"{where}: unknown table {extra[0]!r}; upstreams are [upstream.NAME], "
            "pinned model options [model.NAME]"
        )
    tables = data.get("upstream", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"{where}: each upstream is a table [upstream.NAME]")
    if not tables:
        # Not the default Ollama: a file given and empty is a mistake, not a choice.
        raise ConfigError(
            f"{where}: names no upstream; give each a table [upstream.NAME] with its url"
        )
    return [_spec(name, table, f"{where} [upstream.{name}]") for name, table in tables.items()]


def specs(
    flags: Sequence[str],
    file: str | None,
    ollama_url: str,
    env: Mapping[str, str] | None = None,
) -> list[UpstreamSpec]:
    """Every configured upstream, checked: names unique, kinds known, keys present. Without
    flags or a file, the one Ollama at `ollama_url`."""
    env = os.environ if env is None else env
    found = [parse_flag(flag) for flag in flags]
    if file:
        found += load_file(Path(file).expanduser())
    if not found:
        return [UpstreamSpec(name="ollama", url=ollama_url)]
    seen: set[str] = set()
    for spec in found:
        if spec.name in seen:
            raise ConfigError(f"--upstream: two upstreams are named {spec.name!r}")
        seen.add(spec.name)
        if spec.kind not in KINDS:
            raise ConfigError(
                f"--upstream {spec.name}: unknown kind {spec.kind!r}; known: {', '.join(KINDS)}"
            )
        if spec.key_env is not None and not env.get(spec.key_env):
            raise ConfigError(
                f"--upstream {spec.name}: key_env names {spec.key_env}, which is not set"
            )
    return found
