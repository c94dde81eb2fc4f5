"""Access kept in PostgreSQL, beside the usage log: API keys, the admin token's hash and the
fingerprint secret, so that every gateway on the database agrees on who may ask.

Checking a key runs on every call, so each gateway keeps the keys in memory and reads
`state.keys_version` (moved by every change to a key or to the admin token) every
WATCH_SECONDS; when it moved, the keys are read again. A key revoked through one gateway
stops working on all of them within WATCH_SECONDS plus one read. A key that memory does not
hold is read from the database by its id at its first call (`learn`), so a key made through
one gateway works on every other at once, with its limits: until then a gateway that knew no
key at all let such a call in as anyone's, unlimited and accounted to no key. While the
database cannot be reached, the keys last read stay in force, a key not among them is
answered 503, and changing a key fails with 503.

The database itself (connections, the schema, watches) is handed in as a `Database`
(store.postgres.database makes one): this module only knows the tables of the keys and secrets.

Requires the `postgres` extra (psycopg 3).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import psycopg
from psycopg import sql

from calls.errors import CallError
from store.base import StoreError

from .keys import (
    ADMIN_FILE,
    KEYS_FILE,
    SECRET_FILE,
    Access,
    AdminToken,
    AdminTokenFile,
    ApiKey,
    KeyLimits,
    KeyPriority,
    new_key,
    sha256,
    verify_key,
)

log = logging.getLogger("ollama_host.access")
T = TypeVar("T")

WATCH_SECONDS = 0.25
SCHEMA = "ollama_host"  # made by store.postgres.database's migrations
FINGERPRINT = "fingerprint"
ADMIN_TOKEN = "admin_token"  # noqa: S105 (the name of the row holding the token's hash)

KEYS = sql.Identifier(SCHEMA, "keys")
SECRETS = sql.Identifier(SCHEMA, "secrets")
STATE = sql.Identifier(SCHEMA, "state")


class Watcher(Protocol):
    error: str | None

    def poll(self) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Database(Protocol):
    """What the keys need of their database (store.postgres.database.Database is one)."""

    where: str

    def connect(self, purpose: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        """A connection, or StoreError naming the host."""
        ...

    def unreachable(self, exc: psycopg.Error) -> str: ...

    def bounded(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """One operation on `conn`, within a deadline past which it fails with StoreError
        (a database that holds the connection and answers nothing)."""
        ...

    def migrate(self) -> int: ...

    def watch(
        self,
        query: sql.Composed,
        changed: Callable[[tuple[Any, ...]], bool],
        *,
        every: float,
        name: str,
    ) -> Watcher: ...


_decode_key = msgspec.json.Decoder(ApiKey).decode
_encode = msgspec.json.Encoder().encode


def _secret(cur: psycopg.Cursor[Any], name: str) -> str | None:
    cur.execute(sql.SQL("SELECT value FROM {} WHERE name = %s").format(SECRETS), (name,))
    row = cur.fetchone()
    return str(row[0]) if row else None


def _bump(cur: psycopg.Cursor[Any]) -> None:
    cur.execute(sql.SQL("UPDATE {} SET keys_version = keys_version + 1").format(STATE))


class DatabaseKeyRing:
    """The API keys in the `keys` table (an `access.keys.Keys`)."""

    def __init__(self, db: Database, admin: AdminToken | None = None) -> None:
        self.db = db
        self.address = db.where
        # The admin token whose hash follows the database's (None: one set by --admin-token,
        # which is never written down and wins on this gateway).
        self._admin = admin
        self._keys: dict[str, ApiKey] = {}
        self._lock = threading.Lock()
        # Moved by each write through this gateway: a read of the keys that a write
        # overtook is dropped (the next poll reads them again), so it cannot undo the write.
        self._writes = 0
        self._conn: psycopg.Connection[Any] | None = None
        # Reads of one key by its id (`learn`), one at a time on a connection of their own: a
        # flood of made-up keys costs the database one indexed read at a time, never a pile.
        self._learning = threading.Lock()
        self._reader: psycopg.Connection[Any] | None = None
        self._watch = db.watch(
            sql.SQL("SELECT keys_version, (SELECT value FROM {} WHERE name = {}) FROM {}").format(
                SECRETS, sql.Literal(ADMIN_TOKEN), STATE
            ),
            self._changed,
            every=WATCH_SECONDS,
            name="keys-watch",
        )
        self._watch.poll()
        if self._watch.error:
            raise StoreError(self._watch.error)
        self._watch.start()

    # -- reading (from memory) ---------------------------------------------------------------

    def _changed(self, row: tuple[Any, ...]) -> bool:
        """The keys (or the admin token) changed somewhere: read them again."""
        writes = self._writes
        try:
            with self.db.connect("keys", autocommit=True) as conn, self.db.bounded(conn):
                rows = conn.execute(sql.SQL("SELECT doc::text FROM {}").format(KEYS)).fetchall()
        except (psycopg.Error, StoreError) as exc:
            log.warning("could not read the API keys again (%s); the ones read last hold", exc)
            return False
        keys = {key.id: key for key in (_decode_key(doc) for (doc,) in rows)}
        with self._lock:
            if writes != self._writes:
                return False
            self._keys = keys
        if self._admin is not None and row[1] is not None:
            self._admin.rehash(str(row[1]))
        return True

    @property
    def active(self) -> bool:
        return bool(self._keys)

    def all(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda key: key.created)

    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def verify(self, presented: str) -> ApiKey | None:
        return verify_key(self._keys, presented)

    def refresh(self) -> None:
        """Read the keys now if they changed (the watch does this every WATCH_SECONDS)."""
        self._watch.poll()

    async def learn(self, key_id: str) -> ApiKey | None:
        key = await asyncio.to_thread(self._read_one, key_id)
        if key is None:
            return None
        with self._lock:
            # As a write through this gateway: a read of all the keys that began before
            # this one is dropped, so it cannot forget the key just learnt.
            self._keys = {**self._keys, key.id: key}
            self._writes += 1
        return key

    def _read_one(self, key_id: str) -> ApiKey | None:
        with self._learning:
            try:
                if self._reader is None or self._reader.closed:
                    self._reader = self.db.connect("keys", autocommit=True)
                with self.db.bounded(self._reader):
                    row = self._reader.execute(
                        sql.SQL("SELECT doc::text FROM {} WHERE id = %s").format(KEYS), (key_id,)
                    ).fetchone()
            except (psycopg.OperationalError, StoreError) as exc:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                raise self._unavailable(exc, "this API key cannot be checked now") from None
        return _decode_key(row[0]) if row else None

    def _unavailable(self, exc: psycopg.OperationalError | StoreError, what: str) -> CallError:
        reason = self.db.unreachable(exc) if isinstance(exc, psycopg.Error) else exc
        return CallError(503, "store_unavailable", f"{what} ({reason}); try again")

    # -- writing (to the database, then memory) ----------------------------------------------

    async def _write(self, work: Callable[[psycopg.Cursor[Any]], T]) -> T:
        return await asyncio.to_thread(self._in_transaction, work)

    def _in_transaction(self, work: Callable[[psycopg.Cursor[Any]], T]) -> T:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self.db.connect("keys")
                with (
                    self.db.bounded(self._conn),
                    self._conn.transaction(),
                    self._conn.cursor() as cur,
                ):
                    return work(cur)
            except (psycopg.OperationalError, StoreError) as exc:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise self._unavailable(exc, "the keys cannot be changed now") from None

    async def create(
        self,
        label: str,
        models: list[str] | None,
        limits: KeyLimits,
        *,
        project: str | None = None,
        priority: KeyPriority = "interactive",
        weight: float = 1.0,
    ) -> tuple[ApiKey, str]:
        key, plain = new_key(
            label, models, limits, project=project, priority=priority, weight=weight
        )

        def insert(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(
                sql.SQL("INSERT INTO {} (id, doc) VALUES (%s, %s)").format(KEYS),
                (key.id, _encode(key).decode()),
            )
            _bump(cur)

        await self._write(insert)
        with self._lock:
            self._keys = {**self._keys, key.id: key}
            self._writes += 1
        return key, plain

    async def update(self, key: ApiKey) -> None:
        def store(cur: psycopg.Cursor[Any]) -> ApiKey:
            cur.execute(
                sql.SQL("SELECT doc::text FROM {} WHERE id = %s FOR UPDATE").format(KEYS),
                (key.id,),
            )
            row = cur.fetchone()
            stored = _decode_key(row[0]) if row else None
            # Another gateway may have revoked it since this one read it: that stands.
            if stored is not None and stored.revoked is not None:
                changed = msgspec.structs.replace(key, revoked=stored.revoked)
            else:
                changed = key
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (id, doc) VALUES (%s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc"
                ).format(KEYS),
                (changed.id, _encode(changed).decode()),
            )
            _bump(cur)
            return changed

        changed = await self._write(store)
        with self._lock:
            self._keys = {**self._keys, changed.id: changed}
            self._writes += 1

    def close(self) -> None:
        self._watch.stop()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._learning:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def keys_exist(db: Database) -> bool:
    """True if any API key was ever made in this database; reads, never writes."""
    with db.connect("keys", autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(sql.Literal(f"{SCHEMA}.keys"))
        ).fetchone()
        if not row or not row[0]:
            return False
        found = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(KEYS)).fetchone()
    return bool(found and found[0])


def open_access(
    db: Database, admin_token: str | None, *, reset: bool = False
) -> tuple[Access, str | None]:
    """The access state in the database (its schema made or migrated first), and a newly
    made admin token to show once (or None). Raises StoreError if it cannot."""
    db.migrate()
    made: str | None = None
    try:
        with db.connect("keys") as conn:
            with conn.transaction(), conn.cursor() as cur:
                # Two gateways starting at once must agree on one secret: the first wins.
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING"
                    ).format(SECRETS),
                    (FINGERPRINT, secrets.token_bytes(32).hex()),
                )
                secret = bytes.fromhex(_secret(cur, FINGERPRINT) or "")
            if not admin_token:
                with conn.transaction(), conn.cursor() as cur:
                    token = secrets.token_urlsafe(32)
                    conflict = "DO UPDATE SET value = EXCLUDED.value" if reset else "DO NOTHING"
                    cur.execute(
                        sql.SQL(
                            "INSERT INTO {} (name, value, created) VALUES (%s, %s, %s) "
                            "ON CONFLICT (name) {} RETURNING value"
                        ).format(SECRETS, sql.SQL(conflict)),
                        (ADMIN_TOKEN, sha256(token), datetime.now(UTC)),
                    )
                    if cur.fetchone() is not None:
                        made = token
                        _bump(cur)  # other gateways take the new hash
                    stored = _secret(cur, ADMIN_TOKEN)
                    assert stored is not None
                    token_hash = stored
            else:
                token_hash = sha256(admin_token)
            cur = conn.execute(sql.SQL("SELECT instance FROM {}").format(STATE))
            instance = cur.fetchone()
    except psycopg.OperationalError as exc:
        raise StoreError(db.unreachable(exc)) from None
    admin = AdminToken(token_hash, secret)
    keys = DatabaseKeyRing(db, None if admin_token else admin)
    scope = f"db-{instance[0]}" if instance else None
    return Access(secret, admin, keys, scope=scope), made


def import_access(folder: Path, db: Database) -> list[str]:
    """Copy a data folder's API keys, fingerprint secret and admin token hash into the
    database, each only where the database has none yet; what was done, to report."""
    db.migrate()
    done: list[str] = []
    keys: list[ApiKey] = []
    if (folder / KEYS_FILE).exists():
        keys = msgspec.json.decode((folder / KEYS_FILE).read_bytes(), type=list[ApiKey])
    secret = folder / SECRET_FILE
    admin = folder / ADMIN_FILE
    with db.connect("import") as conn, conn.transaction(), conn.cursor() as cur:
        added = 0
        for key in keys:
            cur.execute(
                sql.SQL("INSERT INTO {} (id, doc) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
                    KEYS
                ),
                (key.id, _encode(key).decode()),
            )
            added += cur.rowcount
        if keys:
            done.append(
                f"{added} of {len(keys)} API keys added ({len(keys) - added} there already)"
            )
        for name, value, what in (
            (FINGERPRINT, secret.read_text().strip() if secret.exists() else None, "fingerprint"),
            (
                ADMIN_TOKEN,
                msgspec.json.decode(admin.read_bytes(), type=AdminTokenFile).sha256
                if admin.exists()
                else None,
                "admin token hash",
            ),
        ):
            if value is None:
                continue
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING"
                ).format(SECRETS),
                (name, value),
            )
            if cur.rowcount:
                done.append(f"the {what} copied")
            elif _secret(cur, name) != value:
                done.append(
                    f"the {what} NOT copied: the database has its own"
                    + (
                        " (user fingerprints made before and after the move will differ)"
                        if name == FINGERPRINT
                        else ""
                    )
                )
        _bump(cur)
    return done
