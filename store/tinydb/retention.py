"""The TinyDB store's retention: records older than --retention-days leave the files, a file
that straddles the limit is rewritten with the newer ones, and `deleted` counts them for the
dashboard's ETag. The writer thread runs it every RETENTION_EVERY seconds.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .. import spill
from ..records import UsageRecord, iso
from . import files
from .files import OpenSegment, SegmentMeta

if TYPE_CHECKING:
    from .recovery import Damage

log = logging.getLogger("ollama_host.store")

RETENTION_EVERY = 3600.0


class Retention:
    """Retention (a mixin of TinyDBStore, whose state it names below)."""

    path: Path
    retention_days: float | None
    deleted: int
    _lock: threading.Lock
    _changed: threading.Condition
    _open: OpenSegment
    _metas: list[SegmentMeta]
    _damage: dict[str, Damage]

    # Recovery's (recovery.py), which the store class takes in beside this one.
    @abstractmethod
    def _salvage(
        self, name: str, why: str, count: int = 0
    ) -> tuple[list[UsageRecord], list[bytes]] | None: ...

    def _apply_retention(self) -> None:
        assert self.retention_days is not None
        cutoff = iso(datetime.now(UTC) - timedelta(days=self.retention_days))
        kept: list[SegmentMeta] = []
        records: list[UsageRecord]
        removed = 0
        for meta in self._metas:
            if meta.min_date >= cutoff:
                kept.append(meta)
                continue
            path = self.path / meta.name
            records = []
            if meta.max_date >= cutoff and path.exists():  # straddles the limit: keep the newer
                try:
                    records = files.read_segment(path)
                except ValueError as exc:
                    readable = self._salvage(meta.name, str(exc), meta.count)
                    records = readable[0] if readable else []
                records = [r for r in records if r.date >= cutoff]
            removed += meta.count - len(records)
            if records:
                lines = [files.encode(r) for r in records]
                kept.append(files.write_segment(self.path, meta.name, records, lines)[0])
            else:  # missing_ok: a run the disk interrupted may have deleted it already
                path.unlink(missing_ok=True)
                files.summary_path(self.path, meta.name).unlink(missing_ok=True)
                files.rows_path(self.path, meta.name).unlink(missing_ok=True)
        current = self._open
        fresh = [r for r in current.records if r.date >= cutoff]
        if len(fresh) < len(current.records):
            removed += len(current.records) - len(fresh)
            lines = [files.encode(r) for r in fresh]
            files.atomic_write(self.path / current.name, files.tinydb_bytes(lines))
            current = OpenSegment(current.name, fresh, lines, sum(map(len, lines)))
        spill.fsync_dir(self.path)
        with self._lock:
            self._metas = kept
            self._changed.notify_all()
            self._open = current
            self.deleted += removed
        if removed:
            log.info(
                "retention: deleted %d usage records older than %g days",
                removed,
                self.retention_days,
            )
