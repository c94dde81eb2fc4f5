"""--model-options: options the operator pins per model, which no caller can change.

Ollama reloads a model when a call asks for another context (`num_ctx`) than the one it is
loaded with, and unloads it when a call's `keep_alive` says so: one client with other options
can thrash a model every other client shares. Pinned options replace what each call asks for,
for that model, before the call reaches any upstream.

    --model-options 'llama3,num_ctx=8192,keep_alive=30m'      (repeatable)

or, in the --upstreams TOML file, a table per model:

    [model."llama3"]
    num_ctx = 8192
    keep_alive = "30m"

Option names and types are Ollama's (its `Options` and `Runner` structs); anything else, or a
value of another type, is refused at start with the entry named.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from .models import canonical
from .types import CallRequest, EmbedRequest

Asked = TypeVar("Asked", CallRequest, EmbedRequest)

# Ollama's options, by the type each takes.
INT, FLOAT, BOOL, STRINGS = "an integer", "a number", "true or false", "a list of strings"
_INTS = (
    "num_ctx num_batch num_gpu main_gpu num_thread num_keep seed num_predict top_k repeat_last_n"
)
_FLOATS = "top_p min_p typical_p temperature repeat_penalty presence_penalty frequency_penalty"
OPTION_TYPES: dict[str, str] = {
    **dict.fromkeys(_INTS.split(), INT),
    **dict.fromkeys(_FLOATS.split(), FLOAT),
    "use_mmap": BOOL,
    "numa": BOOL,
    "stop": STRINGS,
}
KEEP_ALIVE = "keep_alive"


class OptionsError(ValueError):
    """A --model-options entry the gateway cannot use; the message names it."""


def _convert(model: str, name: str, value: Any, *, text: bool) -> Any:
    """`value` as option `name` takes it (`text`: as written on a command line)."""
    where = f"--model-options for {model!r}: {name}"
    if name == KEEP_ALIVE:
        if text:
            try:
                return int(value)
            except ValueError:
                return value  # a duration, such as "30m"; Ollama reads it
        if isinstance(value, str) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            return value
        raise OptionsError(f'{where} must be a duration such as "30m" or seconds, not {value!r}')
    kind = OPTION_TYPES.get(name)
    if kind is None:
        known = ", ".join(sorted([*OPTION_TYPES, KEEP_ALIVE]))
        raise OptionsError(f"{where} is no option Ollama knows (known: {known})")
    try:
        if kind == INT:
            number = int(value) if text else value
            if isinstance(number, int) and not isinstance(number, bool):
                return number
        elif kind == FLOAT:
            number = float(value) if text else value
            if isinstance(number, int | float) and not isinstance(number, bool):
                return float(number)
        elif kind == BOOL:
            if text and value in ("true", "false"):
                return value == "true"
            if isinstance(value, bool):
                return value
        elif text:
            return [part for part in str(value).split("|") if part]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    except ValueError:
        pass
    raise OptionsError(f"{where} must be {kind}, not {value!r}")


def parse_entries(entries: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`MODEL,OPTION=VALUE,...` entries, by canonical model name (later entries win)."""
    pinned: dict[str, dict[str, Any]] = {}
    for entry in entries:
        model, _, rest = entry.partition(",")
        model = model.strip()
        if not model or not rest.strip():
            raise OptionsError(
                f"--model-options {entry!r} must be MODEL,OPTION=VALUE[,OPTION=VALUE...], "
                "such as llama3,num_ctx=8192,keep_alive=30m"
            )
        options = pinned.setdefault(canonical(model), {})
        for part in rest.split(","):
            name, equals, value = part.partition("=")
            if not equals:
                raise OptionsError(f"--model-options for {model!r}: {part!r} must be OPTION=VALUE")
            options[name.strip()] = _convert(model, name.strip(), value.strip(), text=True)
    return pinned


def parse_file(path: str | None) -> dict[str, dict[str, Any]]:
    """The `[model.NAME]` tables of the --upstreams TOML file, by canonical model name."""
    if path is None:
        return {}
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise OptionsError(f"--upstreams {path}: {exc}") from exc
    tables = document.get("model", {})
    if not isinstance(tables, dict):
        raise OptionsError(f"--upstreams {path}: `model` must be tables, [model.NAME]")
    pinned: dict[str, dict[str, Any]] = {}
    for model, table in tables.items():
        if not isinstance(table, dict):
            raise OptionsError(f"--upstreams {path}: [model.{model}] must be a table")
        pinned[canonical(model)] = {
            name: _convert(model, name, value, text=False) for name, value in table.items()
        }
    return pinned


class Pinned:
    """The pinned options, applied to each call for its model."""

    def __init__(self, pinned: Mapping[str, Mapping[str, Any]]) -> None:
        self.options: dict[str, dict[str, Any]] = {}
        self.keep_alive: dict[str, Any] = {}
        for model, options in pinned.items():
            own = dict(options)
            if KEEP_ALIVE in own:
                self.keep_alive[model] = own.pop(KEEP_ALIVE)
            self.options[model] = own

    @classmethod
    def of(cls, entries: Iterable[str], path: str | None) -> Pinned | None:
        """The pinned options of the settings (the file's, then the flags'), or None."""
        pinned = parse_file(path)
        for model, options in parse_entries(entries).items():
            pinned.setdefault(model, {}).update(options)
        return cls(pinned) if pinned else None

    def apply(self, request: Asked) -> Asked:
        key = canonical(request.model)
        options = self.options.get(key)
        keep_alive = self.keep_alive.get(key)
        if options is None and keep_alive is None:
            return request
        if isinstance(request, EmbedRequest):
            return msgspec.structs.replace(
                request,
                options={**(request.options or {}), **(options or {})} or None,
                keep_alive=request.keep_alive if keep_alive is None else keep_alive,
            )
        generation = request.generation
        generation = msgspec.structs.replace(
            generation,
            options={**(generation.options or {}), **(options or {})} or None,
            keep_alive=generation.keep_alive if keep_alive is None else keep_alive,
        )
        return msgspec.structs.replace(request, generation=generation)
