"""The store seam: what the gateway needs from a place that keeps usage records.

`store.tinydb.TinyDBStore` is one implementation (the default: TinyDB files in the data
folder), `store.postgres.PostgresStore` another (a database server); a third is one more
sub-package implementing this `Protocol`, one line in `store.STORES` and its name in
pyproject's `packages`. The app is given a
store; nothing above this package knows which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol

import msgspec

from .records import Stats, UsageQuery, UsageRecord

# Records per read while exporting: few enough that a big log never sits in memory
# (a few MB), enough that a store which scans on every read is not scanned too often.
EXPORT_PAGE = 5000


class StoreError(Exception):
    """The usage store cannot open; the message says why and what to do."""


class FolderInUse(StoreError):
    """Another gateway (or an import) holds the store."""


class StoreHealth(msgspec.Struct):
    status: Literal["ok", "degraded"]
    # Where the records are kept: a folder, or a database address without its password.
    path: str
    # Records appended but not yet safe (written and synced).
    pending: int
    error: str | None = None
    # Stored files (or tables) found damaged since the gateway started.
    damaged: list[str] = msgspec.field(default_factory=list)
    # Records dropped since the start because too many already waited (the writer's bound).
    dropped: int = 0


class UsageStore(Protocol):
    """Keeps usage records: append, read back newest first, aggregate, export.

    Implementations apply their retention (records older than N days are deleted) on their
    own, as configured when opened.
    """

    # Whether several gateways (and the workers of --workers N) can use it at once: then the
    # keys and secrets live in it too, and --workers is allowed.
    shared: bool

    @property
    def changes(self) -> int:
        """A counter that moves whenever the stored records change (an append, a deletion):
        the admin endpoints' ETag. Equal values mean nothing changed in between."""
        ...

    def append(self, record: UsageRecord) -> None:
        """Queue a record; never blocks on storage. Safe to call from the event loop."""
        ...

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        """The records matching q, newest first (by id), from q.offset, at most q.limit."""
        ...

    async def stats(self, q: UsageQuery, *, bucket_seconds: int) -> Stats:
        """Aggregates over every record matching q's filters (its paging is ignored)."""
        ...

    def export(self, q: UsageQuery) -> AsyncIterator[list[UsageRecord]]:
        """Every record matching q's filters, newest first, a page at a time."""
        ...

    def health(self) -> StoreHealth: ...

    async def flush(self) -> None:
        """Wait until everything appended so far is stored (or has failed to be)."""
        ...

    async def aclose(self) -> None:
        """Store everything still queued, then release what the store holds."""
        ...


async def export_pages(store: UsageStore, q: UsageQuery) -> AsyncIterator[list[UsageRecord]]:
    """`export` for stores whose `query` pages cheaply by id cursor (stable under appends)."""
    query = msgspec.structs.replace(q, limit=EXPORT_PAGE, offset=0, before=None)
    while True:
        page = await store.query(query)
        if page:
            yield page
        if len(page) < EXPORT_PAGE:
            return
        query = msgspec.structs.replace(query, before=page[-1].id)
