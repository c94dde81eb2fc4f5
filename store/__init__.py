"""Usage stores: the only code that touches stored records.

`UsageStore` (store.base) is the interface; `open_store` picks an implementation by the
location it is given: a folder of TinyDB files (the default), or a database address whose
scheme names its store in `STORES`.
"""

from __future__ import annotations

import importlib
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
    "kind_of",
    "open_store",
    "shared",
]

# Address scheme -> (module, class, the extra that installs its driver). Imported only when
# used: a workstation install has no database driver.
STORES: dict[str, tuple[str, str, str]] = {
    "postgresql": ("store.postgres", "PostgresStore", "postgres"),
    "postgres": ("store.postgres", "PostgresStore", "postgres"),
}


def kind_of(location: Path | str) -> type[UsageStore]:
    """The store class for `location`: a database address with a scheme in STORES, or a
    folder for TinyDB files. Raises StoreError with what to do when there is none."""
    scheme = str(location).split("://", 1)[0] if "://" in str(location) else None
    if scheme is None:
        return TinyDBStore
    if scheme not in STORES:
        known = ", ".join(f"{s}://" for s in STORES)
        raise StoreError(f"--store must be a folder or an address starting {known}")
    module, name, extra = STORES[scheme]
    try:
        kind: type[UsageStore] = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise StoreError(
            f"the {scheme} store needs its driver ({exc.name}): pip install 'ollama-host[{extra}]'"
        ) from None
    return kind


def shared(location: str | None) -> bool:
    """True if the store at `location` declares that several gateways can share it (a
    database). A location no store takes is not shared (opening it says why)."""
    if location is None:
        return False
    try:
        return kind_of(location).shared
    except StoreError:
        return False


def open_store(location: Path | str, *, retention_days: float | None = None) -> UsageStore:
    """The store kept at `location` (see kind_of). Raises StoreError with what to do when it
    cannot open."""
    kind = kind_of(location)
    if kind is TinyDBStore:
        return TinyDBStore(Path(location), retention_days=retention_days)
    store: UsageStore = kind(str(location), retention_days=retention_days)  # type: ignore[call-arg]
    return store
