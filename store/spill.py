"""Records a store could not keep: written somewhere else, then imported back.

When the gateway stops while its disk refuses the journal (a full disk, store/tinydb), or
while PostgreSQL is away, and whenever PostgreSQL refuses a record (store/postgres), the
records would be lost. Instead they go, as JSON lines, to the first of these that takes
them: $XDG_STATE_HOME/ollama-host/spill/ (~/.local/state/ollama-host/spill/), then the temp
folder's ollama-host-spill/ ($TMPDIR, else the system's), then standard error, one record
per line after SPILL_PREFIX (systemd's journal keeps it).
`python -m ollama_host import-spill` brings them back (store/import_spill.py); records carry
ids, so importing twice adds nothing.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import msgspec

from .records import UsageRecord

SPILL_PREFIX = "USAGE RECORD SPILL: "
STDERR = "standard error"
_PREFIX = SPILL_PREFIX.encode()
# Where the code lives: `python -m ollama_host` runs from here (the service's working directory).
ROOT = Path(__file__).resolve().parent.parent


def places(env: Mapping[str, str]) -> list[Path]:
    """The folders tried in turn, before standard error."""
    found: list[Path] = []
    state = env.get("XDG_STATE_HOME")
    if not state:
        with contextlib.suppress(RuntimeError):  # no home directory at all
            state = str(Path.home() / ".local" / "state")
    if state:
        found.append(Path(state) / "ollama-host" / "spill")
    # $TMPDIR as it is: gettempdir() would pass over one it cannot write to for another.
    found.append(Path(env.get("TMPDIR") or tempfile.gettempdir()) / "ollama-host-spill")
    return found


def spill(lines: list[bytes], *, env: Mapping[str, str] = os.environ) -> tuple[str, list[str]]:
    """Write these encoded records to the first place that takes them whole.

    Returns where they went (a file's path, or STDERR) and why each place
    before it refused. Raises OSError only if standard error refuses too.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    data = b"".join(line + b"\n" for line in lines)
    refused: list[str] = []
    for folder in places(env):
        path = folder / f"usage-{stamp}-{os.getpid()}.jsonl"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Owner-only, like the journal: records hold prompts and answers.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            refused.append(f"{folder}: {exc.strerror or exc}")
            continue
        try:
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            refused.append(f"{folder}: {exc.strerror or exc}")
            continue
        fsync_dir(folder)
        return str(path), refused
    write_all(2, b"".join(_PREFIX + line + b"\n" for line in lines))
    return STDERR, refused


def import_command(where: str, target: list[str]) -> str:
    """The command that imports a spill into `target` (`--data DIR` or `--store ADDRESS`),
    as the log tells it."""
    source = "FILE" if where == STDERR else shlex.quote(where)
    python = shlex.quote(sys.executable or "python3")
    into = " ".join(shlex.quote(arg) for arg in target)
    return f"cd {shlex.quote(str(ROOT))} && {python} -m ollama_host import-spill {source} {into}"


def write_all(fd: int, data: bytes) -> None:
    """All of `data`, however many writes it takes (a write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(folder: Path) -> None:
    """A new file is durable only once the folder's entry is on disk too."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Imported(NamedTuple):
    """What an import of spilled records did."""

    added: int
    present: int  # already in the store (imported before, or written after all)
    unreadable: int


class SpillError(Exception):
    """The import could not write the records; the message says why and what to do."""


class SpillLines(NamedTuple):
    records: list[UsageRecord]
    unreadable: int  # lines that should have been records and are not


_decode = msgspec.json.Decoder(UsageRecord).decode


def read_spill(paths: Iterable[Path]) -> SpillLines:
    """The records in spill files, or in saved log output holding SPILL_PREFIX lines
    (other log lines are passed over). Raises OSError."""
    records: list[UsageRecord] = []
    unreadable = 0
    for path in paths:
        raw = path.read_bytes()
        prefixed = _PREFIX + b"{" in raw
        for line in raw.split(b"\n"):
            if prefixed:
                at = line.find(_PREFIX + b"{")
                if at < 0:
                    continue  # a log line around the spilled ones
                line = line[at + len(_PREFIX) :]
            line = line.strip()
            if not line:
                continue
            try:
                records.append(_decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError):
                unreadable += 1
    return SpillLines(records, unreadable)
