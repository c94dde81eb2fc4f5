"""The usage store: the only code that touches the usage file."""

from __future__ import annotations

from .records import InputMessage, Status, UsageQuery, UsageRecord, iso, new_id
from .tinydb_store import StoreError, StoreHealth, UsageStore

__all__ = [
    "InputMessage",
    "Status",
    "StoreError",
    "StoreHealth",
    "UsageQuery",
    "UsageRecord",
    "UsageStore",
    "iso",
    "new_id",
]
