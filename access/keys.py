"""Secrets: the admin token, callers' API keys, stream tickets, and fingerprints.

No secret is ever stored or logged as itself. The admin token and API keys are
kept as SHA-256 hashes (they are long random strings, so a plain hash cannot be
reversed by guessing), and compared in constant time. A caller's free-form
`user_key`, which may be short, is kept only as an HMAC under a secret that
lives in the data folder.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from calls.models import canonical

SECRET_FILE = "fingerprint.key"  # noqa: S105 (a file name, not a secret)
KEYS_FILE = "keys.json"
ADMIN_FILE = "admin-token.json"
KEY_PREFIX = "ohk_"
TICKET_SECONDS = 60.0
ADMIN = "admin"  # a ticket holder that is the admin, not a key
ANYONE = ""  # a ticket holder while no key exists


def load_or_create_secret(folder: Path) -> bytes:
    path = folder / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    _write_private(path, secret.hex().encode())
    return secret


def fingerprint(secret: bytes, key: str) -> str:
    return "fp_" + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:20]


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, by atomic replace."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# -- the admin token -------------------------------------------------------------


class AdminTokenFile(msgspec.Struct):
    sha256: str
    created: str


class AdminToken:
    """Who may read the usage log. Holds only the token's hash."""

    def __init__(self, token_hash: str, session_secret: bytes) -> None:
        self._hash = token_hash
        # The browser's cookie holds a value derived from the token, not the token.
        self.session = hmac.new(
            session_secret, b"admin-session:" + token_hash.encode(), hashlib.sha256
        ).hexdigest()

    @classmethod
    def setup(
        cls, folder: Path, configured: str | None, session_secret: bytes, *, reset: bool = False
    ) -> tuple[AdminToken, str | None]:
        """The admin token in force, and the new token itself if one was just made.

        A configured token wins and is never written down. Otherwise the first start
        makes one, keeps its hash in the data folder, and returns it once to be shown.
        """
        if configured:
            return cls(sha256(configured), session_secret), None
        path = folder / ADMIN_FILE
        if not reset:
            try:
                stored = msgspec.json.decode(path.read_bytes(), type=AdminTokenFile)
                return cls(stored.sha256, session_secret), None
            except FileNotFoundError:
                pass
        token = secrets.token_urlsafe(32)
        record = AdminTokenFile(sha256=sha256(token), created=datetime.now(UTC).isoformat())
        _write_private(path, msgspec.json.encode(record))
        return cls(record.sha256, session_secret), token

    def check_token(self, presented: str) -> bool:
        return hmac.compare_digest(sha256(presented), self._hash)

    def check_session(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.session.encode())


# -- API keys --------------------------------------------------------------------

Limit = Annotated[int, Meta(ge=0)]


class KeyLimits(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A key's own limits; None falls back to the gateway's per-key defaults, 0 means none."""

    rpm: Limit | None = None
    tokens_per_day: Limit | None = None
    streams: Limit | None = None


class ApiKey(msgspec.Struct, kw_only=True):
    """A caller's key as stored: never the key itself."""

    id: str
    label: str
    sha256: str
    created: str
    revoked: str | None = None
    # None: every model; otherwise only these models, each as Ollama names it: `llama3` is
    # `llama3:latest` (and the other way round), but not `llama3:8b`, `:cloud` or `:local`.
    models: list[str] | None = None
    limits: KeyLimits = msgspec.field(default_factory=KeyLimits)

    @property
    def fingerprint(self) -> str:
        """What the usage log keeps of the key: public, stable, not the secret."""
        return f"fp_{self.sha256[:20]}"

    def allows(self, model: str) -> bool:
        if self.models is None:
            return True
        # Exactly the listed models: comparing the part before `:` let a key for `llama3`
        # use `llama3:cloud`, which Ollama runs on ollama.com under the server's account.
        wanted = canonical(model)
        return any(canonical(allowed) == wanted for allowed in self.models)


class KeyRing:
    """The API keys, in `keys.json` in the data folder. Thread-safe; writes are atomic."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / KEYS_FILE
        self._lock = threading.Lock()
        try:
            keys = msgspec.json.decode(self._path.read_bytes(), type=list[ApiKey])
        except FileNotFoundError:
            keys = []
        self._keys = {key.id: key for key in keys}
        self._tickets: dict[str, tuple[float, str]] = {}

    @property
    def active(self) -> bool:
        """True once any key was ever made: from then on, asking needs a key.

        Revoked keys count: revoking the last key must not reopen the gateway to everyone.
        """
        return bool(self._keys)

    def all(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda key: key.created)

    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def _save(self) -> None:
        _write_private(self._path, msgspec.json.encode(self.all()))

    def create(self, label: str, models: list[str] | None, limits: KeyLimits) -> tuple[ApiKey, str]:
        """A new key: returns its stored form and the key itself, which is shown once."""
        key_id = secrets.token_hex(4)
        plain = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(
            id=key_id,
            label=label,
            sha256=sha256(plain),
            created=datetime.now(UTC).isoformat(),
            models=models,
            limits=limits,
        )
        with self._lock:
            self._keys[key_id] = key
            self._save()
        return key, plain

    def update(self, key: ApiKey) -> None:
        with self._lock:
            self._keys[key.id] = key
            self._save()

    def verify(self, presented: str) -> ApiKey | None:
        """The live key `presented` is, or None. Constant time in the secret part."""
        if not presented.startswith(KEY_PREFIX):
            return None
        key_id = presented[len(KEY_PREFIX) :].split("_", 1)[0]
        key = self._keys.get(key_id)
        # Compare even when the id is unknown, so timing says nothing about which ids exist.
        expected = key.sha256 if key else "0" * 64
        if hmac.compare_digest(sha256(presented), expected) and key and key.revoked is None:
            return key
        return None

    # -- tickets: short-lived, single-use, for EventSource, which cannot send headers

    def issue_ticket(self, holder: str) -> str:
        """A ticket for `holder`: a key id, or ADMIN."""
        ticket = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            self._tickets = {t: v for t, v in self._tickets.items() if v[0] > now}
            self._tickets[ticket] = (now + TICKET_SECONDS, holder)
        return ticket

    def redeem_ticket(self, ticket: str) -> str | None:
        """The holder of a live ticket, or None. A ticket works once."""
        with self._lock:
            found = self._tickets.pop(ticket, None)
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]


class Access:
    """Everything access control needs from the data folder, opened once at startup."""

    def __init__(self, secret: bytes, admin: AdminToken, keys: KeyRing) -> None:
        self.secret = secret
        self.admin = admin
        self.keys = keys

    @classmethod
    def open(
        cls, folder: Path, admin_token: str | None, *, reset: bool = False
    ) -> tuple[Access, str | None]:
        """The access state, and a newly made admin token to show once (or None)."""
        folder.mkdir(parents=True, exist_ok=True)
        secret = load_or_create_secret(folder)
        admin, new_token = AdminToken.setup(folder, admin_token, secret, reset=reset)
        return cls(secret, admin, KeyRing(folder)), new_token
