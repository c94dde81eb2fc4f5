"""What the TinyDB store does about damage, a crash and the past: a file the disk damaged is
repaired, never dropped whole. Its documents that still read are kept (at startup, or by the
writer as soon as a query finds the damage, queries reading around it meanwhile), the
damaged original is kept beside it as NAME.corrupt-STAMP, one loud line is logged, and
/health says `degraded`, naming it. The journal a crash left is replayed, each record once,
and the one-file log of earlier versions is brought in through it.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import abstractmethod
from collections import OrderedDict
from pathlib import Path

import msgspec

from .. import spill
from ..records import UsageRecord
from ..writer import Queue
from . import files
from .files import OpenSegment, Row, SegmentMeta

log = logging.getLogger("ollama_host.store")


class Damage(msgspec.Struct):
    """A usage file the disk damaged, as found by this process."""

    name: str
    lost: int | None  # documents that could not be read; None: none could (set aside whole)
    aside: str | None = None  # where the damaged original is kept, once it is

    def describe(self) -> str:
        if self.lost is None:
            return f"usage file {self.name} was unreadable; it is kept as {self.aside}"
        kept = f"the damaged original is kept as {self.aside}" if self.aside else "repairing it"
        records = "record" if self.lost == 1 else "records"
        return (
            f"usage file {self.name} is damaged: {self.lost} {records} could not be read ({kept})"
        )


class Recovery:
    """The TinyDB store's repairs (a mixin of TinyDBStore, whose state it names below)."""

    folder: Path
    path: Path
    _queue: Queue
    _lock: threading.Lock
    _changed: threading.Condition
    _open: OpenSegment
    _journal_fd: int
    _metas: list[SegmentMeta]
    _cache: OrderedDict[tuple[str, int], list[Row]]
    _damage: dict[str, Damage]
    _suspect: set[tuple[str, int]]
    _repairs: list[str]

    # The store's own reading and cache, which the store class defines.
    @abstractmethod
    def _rows(self, meta: SegmentMeta) -> list[Row]: ...

    @abstractmethod
    def _cache_put(self, meta: SegmentMeta, rows: list[Row]) -> None: ...

    def _reindex(self, name: str) -> tuple[SegmentMeta, list[Row]] | None:
        try:
            return files.reindex(self.path, name)
        except ValueError as exc:
            # The summary (if any) was written with the file, before the damage.
            meta = files.read_meta(files.summary_path(self.path, name))
            kept = self._salvage(name, str(exc), meta.count if meta else 0)
            return files.write_segment(self.path, name, *kept) if kept else None

    def _salvage(
        self, name: str, why: str, count: int = 0
    ) -> tuple[list[UsageRecord], list[bytes]] | None:
        """The records of a damaged file that still read, to be written back in its place
        (the original is kept aside first); None, and the file set aside, if none do.
        `count`: how many records the file held, if known."""
        path = self.path / name
        found = files.salvage(path.read_bytes())
        lost = max(found.lost, count - len(found.records))
        if not found.records:
            aside = files.set_aside(path, why)
            files.summary_path(self.path, name).unlink(missing_ok=True)
            files.rows_path(self.path, name).unlink(missing_ok=True)
            with self._lock:
                self._damage[name] = Damage(name, lost=None, aside=str(aside))
            return None
        aside = files.keep_aside(path)
        log.error(
            "USAGE FILE DAMAGED: %s: %d records could not be read and are left out; "
            "the %d that read are kept in it. The damaged original is kept as %s.",
            path,
            lost,
            len(found.records),
            aside,
        )
        with self._lock:
            self._damage[name] = Damage(name, lost=lost, aside=str(aside))
        return found.records, [files.encode(r) for r in found.records]

    def _import_single_file(self) -> None:
        """Bring in data/usage.json, the one-file log of earlier versions, through the
        journal: a crash half-way leaves records the journal replay counts once."""
        legacy = self.folder / "usage.json"
        if not legacy.exists():
            return
        try:
            records = files.read_segment(legacy)
        except ValueError as exc:
            files.set_aside(legacy, str(exc))
            return
        journal = os.pread(self._journal_fd, os.fstat(self._journal_fd).st_size, 0)
        whole = journal.rfind(b"\n") + 1
        if whole < len(journal):  # a line a crash cut short: drop it before appending
            os.ftruncate(self._journal_fd, whole)
        spill.write_all(self._journal_fd, b"".join(files.encode(r) + b"\n" for r in records))
        os.fsync(self._journal_fd)
        kept = legacy.with_name("usage.json.imported")
        os.replace(legacy, kept)
        log.warning(
            "imported %d usage records from %s (the single-file log of earlier versions); "
            "the file is kept as %s and can be deleted",
            len(records),
            legacy,
            kept,
        )

    def _replay_journal(self) -> list[tuple[UsageRecord, bytes]]:
        """Records a crash left in the journal and not yet in a TinyDB file."""
        raw = os.pread(self._journal_fd, os.fstat(self._journal_fd).st_size, 0)
        if not raw:
            return []
        lines = raw.split(b"\n")
        torn = lines.pop()  # after the last newline: empty, or a write a crash cut short
        found: list[tuple[UsageRecord, bytes]] = []
        bad = 0
        for line in lines:
            try:
                found.append((files.decode_line(line), line))
            except (msgspec.DecodeError, msgspec.ValidationError):
                bad += 1
        if bad:
            aside = files.set_aside(self.path / files.JOURNAL, f"{bad} unreadable journal lines")
            self._damage[files.JOURNAL] = Damage(files.JOURNAL, lost=bad, aside=str(aside))
            os.close(self._journal_fd)
            self._journal_fd = os.open(
                self.path / files.JOURNAL, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600
            )
            log.error("the readable lines of %s are kept and folded in", aside)
        elif torn:
            log.warning("dropped the last journal line, cut short by a crash (%d bytes)", len(torn))
            os.ftruncate(self._journal_fd, len(raw) - len(torn))
        if not found:
            return []
        # A crash between writing a TinyDB file and emptying the journal leaves records in
        # both. Only files holding an id at least as new as the journal's oldest can.
        oldest = min(r.id for r, _ in found)
        seen = {r.id for r in self._open.records}
        for meta in self._metas:
            if meta.max_id >= oldest:
                seen.update(r.id for r in self._rows(meta))
        fresh: list[tuple[UsageRecord, bytes]] = []
        for r, line in found:
            if r.id not in seen:
                seen.add(r.id)
                fresh.append((r, line))
        if bad:  # the journal was replaced: put the records back before anything else
            spill.write_all(self._journal_fd, b"".join(line + b"\n" for _, line in fresh))
            os.fsync(self._journal_fd)
        log.info("recovered %d records from the journal", len(fresh))
        return fresh

    def _repair(self, name: str) -> None:
        """Write back the readable records of a closed file a query found damaged."""
        with self._lock:
            meta = next((m for m in self._metas if m.name == name), None)
            if meta is None or (meta.name, meta.size) not in self._suspect:
                return  # retention removed or rewrote it meanwhile
        path = self.path / name
        try:
            try:
                # A file that reads whole was not damaged: its rows were wrong. Rebuild them.
                indexed = files.reindex(self.path, name)
            except ValueError as exc:
                kept = self._salvage(name, str(exc), meta.count)
                indexed = files.write_segment(self.path, name, *kept) if kept else None
            spill.fsync_dir(self.path)
            spill.fsync_dir(self.path / files.INDEX)
        except OSError as exc:
            # Queries go on reading around the damage; the next start tries again.
            log.error("USAGE FILE DAMAGED: %s, and it cannot be repaired now: %s", path, exc)
            return
        with self._lock:
            others = [m for m in self._metas if m.name != name]
            if indexed is None:  # nothing in it read: it was set aside whole
                self._metas = others
            else:
                self._metas = sorted([*others, indexed[0]], key=lambda m: files.segment_key(m.name))
                self._cache_put(*indexed)
            self._changed.notify_all()

    def _found_damage(self, metas: list[SegmentMeta]) -> None:
        """A query found documents that do not read: read around them, and have the writer
        repair the files (it logs, once per file)."""
        with self._queue.wake:
            for meta in metas:
                key = (meta.name, meta.size)
                if key in self._suspect:
                    continue
                self._suspect.add(key)
                self._cache.pop(key, None)
                self._damage.setdefault(meta.name, Damage(meta.name, lost=0))
                self._repairs.append(meta.name)
            self._queue.wake.notify()

    def _salvaged_rows(self, meta: SegmentMeta) -> list[Row]:
        """Rows of the documents of a damaged file that still read, pointing into it as is."""
        try:
            rows, lost = files.salvaged_rows(self.path / meta.name)
        except OSError as exc:
            log.error("USAGE FILE UNREADABLE, skipped by this query: %s", exc)
            return []
        with self._lock:
            damage = self._damage.get(meta.name)
            if damage is not None and damage.aside is None:
                damage.lost = max(lost, meta.count - len(rows))
            self._cache_put(meta, rows)
        return rows
