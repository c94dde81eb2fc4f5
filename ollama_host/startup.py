"""The start: open what the gateway needs, in the order that loses nothing if it must refuse.

Every refusal is one `Refused` line (the caller logs it and exits 1), never a traceback:

1. `--workers` with a store that cannot be shared;
2. a Redis address that cannot be used;
3. the secrets (the data folder's files, or the database's keys), read writing nothing, so a
   damaged one stops the start before the journal is replayed or a token is made;
4. the usage store (a locked or unusable folder, a database that cannot be reached);
5. an open asking endpoint on a non-loopback address (checked before any admin token is made,
   so a refused start leaves no token behind that nobody was shown);
6. the access state itself, which may make the admin token and the fingerprint secret.
"""

from __future__ import annotations

import asyncio

from access.keys import Access, SecretsError
from store import StoreError, UsageStore, open_store

from .backends import SetupError, keys_exist, open_access, open_shared
from .server import is_loopback
from .settings import Settings
from .workers import refuse_workers


class Refused(Exception):
    """The gateway must not start; the message says why and what to do."""


def open_parts(settings: Settings, *, worker: bool) -> tuple[UsageStore, Access, str | None]:
    """The usage store, the access state, and a newly made admin token to show once."""
    if not worker and (why := refuse_workers(settings)):
        raise Refused(why)
    try:
        if settings.redis:
            open_shared(settings.redis, "check")
        any_keys = keys_exist(
            settings.store,
            settings.data_path,
            settings.admin_token,
            reset=settings.reset_admin_token,
        )
        store = open_store(
            settings.store or settings.data_path, retention_days=settings.retention_days
        )
    except (SecretsError, StoreError, SetupError) as exc:
        raise Refused(str(exc)) from None
    if not is_loopback(settings.host) and not any_keys and not settings.admin_token:
        asyncio.run(store.aclose())
        raise Refused(
            f"refusing to listen on {settings.host}: anyone who can reach it could use Ollama "
            "and read every prompt. Create an API key first (on 127.0.0.1: POST "
            "/api/v1/admin/keys), or set --admin-token explicitly to accept an open asking "
            "endpoint"
        )
    try:
        # A worker never resets the token: the process that started it has.
        access, new_token = open_access(
            settings.store,
            settings.data_path,
            settings.admin_token,
            reset=settings.reset_admin_token and not worker,
        )
    except (SecretsError, StoreError) as exc:  # damaged since it was read above
        asyncio.run(store.aclose())
        raise Refused(str(exc)) from None
    return store, access, new_token


def close_parts(store: UsageStore, access: Access) -> None:
    """Let go of what open_parts opened (the process hands over to its workers)."""
    asyncio.run(store.aclose())
    access.close()
