"""The records a PostgreSQL store holds and the database has not acknowledged, on local disk.

A record is safe once its COPY commits. Until then it lives in the gateway's memory, which
a kill -9 (or an OOM kill, or a crash) takes with it. So the writer appends each batch to a
file of its own before it sends it, and empties the file once nothing written there waits
any more; while the database is away it appends what queues up every JOURNAL_EVERY. The
file is in the spill folder (store/spill.py: $XDG_STATE_HOME/ollama-host/spill/, else the
temp folder's), named `pending-STAMP-PID.jsonl`, and locked while its gateway lives.

The writes are not fsynced: a kill -9 leaves what was written in the kernel, which writes it
out, while a power cut may lose the last seconds. That costs one write() per batch and no
disk flush on the way to the database.

At a clean stop with records the database never took, the file becomes a spill file
(`usage-STAMP-PID.jsonl`), which `python -m ollama_host import-spill` takes back. After a
kill -9, the next gateway to start finds the dead one's file (no lock on it), makes it a
spill file and says so with the import command; an empty one it deletes. A file may also
hold records the database took just before the process died: the import adds each once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from .. import spill
from ..records import UsageRecord

log = logging.getLogger("ollama_host.store")

# While the database is away, records that queue up reach the file at most this much later.
JOURNAL_EVERY = 0.1
PREFIX = "pending-"

_encode = msgspec.json.Encoder().encode


def doc(record: UsageRecord) -> bytes | None:
    """The record as JSON, or None if it cannot be encoded (a lone surrogate, which msgspec
    refuses on the way in already)."""
    try:
        return _encode(record)
    except (UnicodeEncodeError, msgspec.EncodeError):
        return None


def encodable(records: list[UsageRecord]) -> list[bytes]:
    """The records as JSON lines; one that cannot be encoded is left out."""
    return [line for line in map(doc, records) if line is not None]


class PendingFile:
    """This gateway's file of records not yet acknowledged (see the module's docstring)."""

    def __init__(self, *, env: Mapping[str, str] = os.environ) -> None:
        self.path: Path | None = None
        self.error: str | None = None
        self._fd: int | None = None
        self._size = 0
        refused: list[str] = []
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        for folder in spill.places(env):
            name = f"{PREFIX}{stamp}-{os.getpid()}.jsonl"
            path, making = folder / name, folder / f".{name}"
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            except OSError as exc:
                refused.append(f"{folder}: {exc.strerror or exc}")
                continue
            # Locked before it has the name others look for: a gateway starting meanwhile
            # must never take it for a dead one's.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                os.rename(making, path)
            except OSError as exc:
                os.close(fd)
                with contextlib.suppress(OSError):
                    making.unlink()
                refused.append(f"{folder}: {exc.strerror or exc}")
                continue
            self.path, self._fd = path, fd
            return
        self.error = "no folder takes the file of pending records (" + "; ".join(refused) + ")"
        log.error(
            "%s: records waiting for PostgreSQL are lost if the gateway is killed", self.error
        )

    def write(self, records: list[UsageRecord]) -> None:
        """Append these records (before they are sent)."""
        if self._fd is not None and records:
            self.write_lines(encodable(records))

    def write_lines(self, lines: list[bytes]) -> None:
        """Append these records, encoded as JSON already."""
        if self._fd is None or not lines:
            return
        data = b"".join(line + b"\n" for line in lines)
        try:
            spill.write_all(self._fd, data)
        except OSError as exc:
            # Cut off a partial line, so the file holds whole records only.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            error = f"cannot write the file of pending records {self.path}: {exc.strerror or exc}"
            if error != self.error:
                log.error("%s; records waiting for PostgreSQL are lost if killed", error)
            self.error = error
            return
        self._size += len(data)
        self.error = None

    def clear(self) -> None:
        """Nothing written here waits any more."""
        if self._fd is None or not self._size:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            self._size = 0

    def keep(self) -> str | None:
        """At a stop with records left: make the file a spill file, synced; its path, or None
        if there is no file (or it cannot be kept)."""
        if self._fd is None or self.path is None:
            return None
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
            kept = self.path.with_name(self.path.name.replace(PREFIX, "usage-", 1))
            os.rename(self.path, kept)
            spill.fsync_dir(kept.parent)
        except OSError as exc:
            log.error("cannot keep the file of pending records %s: %s", self.path, exc)
            return None
        finally:
            os.close(fd)
        return str(kept)

    def remove(self) -> None:
        """At a stop with nothing left: the file goes."""
        if self._fd is None or self.path is None:
            return
        os.close(self._fd)
        self._fd = None
        with contextlib.suppress(OSError):
            self.path.unlink()


def left_behind(*, env: Mapping[str, str] = os.environ) -> list[tuple[Path, int]]:
    """Files of pending records whose gateway is gone (killed), renamed to spill files, with
    how many records each holds; empty ones are deleted."""
    found: list[tuple[Path, int]] = []
    for folder in spill.places(env):
        try:
            paths = sorted(folder.glob(f"{PREFIX}*.jsonl"))
        except OSError:
            continue
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live gateway's
                if os.fstat(fd).st_size == 0:
                    with contextlib.suppress(OSError):
                        path.unlink()
                    continue
                lines = sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
                # A spill file now: told once, imported with the others.
                kept = path.with_name(path.name.replace(PREFIX, "usage-", 1))
                os.rename(path, kept)
            except OSError:
                continue
            finally:
                os.close(fd)
            found.append((kept, lines))
    return found
