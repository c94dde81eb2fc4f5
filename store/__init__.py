"""The usage store: the only code that touches the usage file."""

from __future__ import annotations

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
    new_id,
)
from .usage_store import FolderInUse, StoreError, StoreHealth, UsageStore

__all__ = [
    "Bucket",
    "FolderInUse",
    "GroupStats",
    "InputMessage",
    "Stats",
    "Status",
    "StoreError",
    "StoreHealth",
    "Totals",
    "UsageQuery",
    "UsageRecord",
    "UsageStore",
    "iso",
    "new_id",
]
