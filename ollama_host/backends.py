"""The program picks implementations: where access state lives (the data folder, for one
gateway, or the database named by --store, for every gateway on it) and where limits are
counted (in memory, or in the Redis named by --redis). Below this, access and the store
know only the interfaces."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from access.keys import Access, check_secrets
from access.limits import Counters
from access.tickets import Tickets
from queueing.sharing import Shared as SharedQueue
from store import shared


class SetupError(Exception):
    """A setting cannot be used as given; the message says what to do."""


def open_access(
    store: str | None, folder: Path, admin_token: str | None, *, reset: bool = False
) -> tuple[Access, str | None]:
    """The access state, and a newly made admin token to show once (or None).

    Raises store.StoreError when the database cannot be used.
    """
    if store is not None and shared(store):
        from access.pg_keys import open_access as open_in_database
        from store.postgres.database import Database

        return open_in_database(Database(store), admin_token, reset=reset)
    return Access.open(folder, admin_token, reset=reset)


def keys_exist(
    store: str | None, folder: Path, admin_token: str | None, *, reset: bool = False
) -> bool:
    """True if any API key was ever made; reads, never writes.

    In the data folder, every secrets file is read on the way (SecretsError if one is
    damaged), so that the start stops before anything that cannot be undone.
    """
    if store is not None and shared(store):
        from access.pg_keys import keys_exist as in_database
        from store.postgres.database import Database

        return in_database(Database(store))
    return check_secrets(folder, admin_token, reset=reset)


class Shared(Counters, Tickets, Protocol):
    """What --redis provides: counters and tickets, and a way to let them go."""

    async def check(self) -> None: ...

    async def aclose(self) -> None: ...


def open_shared(url: str, scope: str) -> Shared:
    """Counters and tickets in the Redis at `url`, under `scope`. SetupError if unusable."""
    try:
        from access.redis_shared import RedisShared, check_url
    except ImportError as exc:
        raise SetupError(
            f"--redis needs the Redis client ({exc.name}): pip install 'ollama-host[redis]'"
        ) from None
    if (why := check_url(url)) is not None:
        raise SetupError(why)
    return RedisShared(url, scope)


def open_shared_queue(url: str, scope: str) -> SharedQueue:
    """Upstream caps and the fair queue in the Redis at `url`, under `scope` (the access
    scope, as the limits use). SetupError if unusable."""
    try:
        from queueing.shared import SharedSlots
    except ImportError as exc:
        raise SetupError(
            f"--redis needs the Redis client ({exc.name}): pip install 'ollama-host[redis]'"
        ) from None
    return SharedSlots(url, scope)
