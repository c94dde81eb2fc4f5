"""Usage stores: the only code that touches stored records.

`UsageStore` (store.base) is the interface; `open_store` picks an implementation by the
location it is given. TinyDB files in a folder are the default.
"""

from __future__ import annotations

from pathlib import Path

from .base import FolderInUse, StoreError, StoreHealth, UsageStore
from .records import (
    Bucket,
    GroupStats,
    InputMessage,
    Stats,
    Status,
    Totals,
    UsageQuery,
    UsageRecord,
    iso,
)
from .tinydb import TinyDBStore

__all__ = [
    "Bucket",
    "FolderInUse",
    "GroupStats",
    "InputMessage",
    "Stats",
    "Status",
    "StoreError",
    "StoreHealth",
    "TinyDBStore",
    "Totals",
    "UsageQuery",
    "UsageRecord",
    "UsageStore",
    "iso",
    "open_store",
]


def open_store(location: Path, *, retention_days: float | None = None) -> UsageStore:
    """The store kept at `location`: TinyDB files in that folder."""
    return TinyDBStore(location, retention_days=retention_days)
