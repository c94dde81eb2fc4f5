"""Where access state lives: the data folder (one gateway), or the database named by --store
(every gateway on it); and where limits are counted: in memory, or in a Redis (--redis)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from store import shared

from .keys import Access, KeyRing
from .limits import Counters
from .tickets import Tickets


class SetupError(Exception):
    """A setting cannot be used as given; the message says what to do."""


def open_access(
    store: str | None, folder: Path, admin_token: str | None, *, reset: bool = False
) -> tuple[Access, str | None]:
    """The access state, and a newly made admin token to show once (or None).

    Raises store.StoreError when the database cannot be used.
    """
    if store is not None and shared(store):
        from .pg_keys import open_access as open_in_database

        return open_in_database(store, admin_token, reset=reset)
    return Access.open(folder, admin_token, reset=reset)


def keys_exist(store: str | None, folder: Path) -> bool:
    """True if any API key was ever made; reads, never writes."""
    if store is not None and shared(store):
        from .pg_keys import keys_exist as in_database

        return in_database(store)
    return KeyRing(folder).active


class Shared(Counters, Tickets, Protocol):
    """What --redis provides: counters and tickets, and a way to let them go."""

    async def check(self) -> None: ...

    async def aclose(self) -> None: ...


def open_shared(url: str, scope: str) -> Shared:
    """Counters and tickets in the Redis at `url`, under `scope`. SetupError if unusable."""
    try:
        from .redis_shared import RedisShared, check_url
    except ImportError as exc:
        raise SetupError(
            f"--redis needs the Redis client ({exc.name}): pip install 'ollama-host[redis]'"
        ) from None
    if (why := check_url(url)) is not None:
        raise SetupError(why)
    return RedisShared(url, scope)
