"""Secrets: the admin token, callers' API keys, and fingerprints.

No secret is ever stored or logged as itself. The admin token and API keys are
kept as SHA-256 hashes (they are long random strings, so a plain hash cannot be
reversed by guessing), and compared in constant time. A caller's free-form
`user_key`, which may be short, is kept only as an HMAC under a secret that
lives in the data folder.

`Keys` is the seam for where API keys are kept: `KeyRing` keeps them in `keys.json` in the
data folder, for one gateway; access.pg_keys keeps them in PostgreSQL, for several. Stream
tickets have their own seam, access.tickets.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, Protocol

import msgspec
from msgspec import Meta

from calls.models import canonical

from .tickets import MemoryTickets, Tickets

SECRET_FILE = "fingerprint.key"  # noqa: S105 (a file name, not a secret)
KEYS_FILE = "keys.json"
ADMIN_FILE = "admin-token.json"
KEY_PREFIX = "ohk_"
ADMIN = "admin"  # a ticket holder that is the admin, not a key
ANYONE = ""  # a ticket holder while no key exists


# Shorter than this, a fingerprint secret could be guessed, and with it every user_key
# behind a fingerprint; the gateway makes 32 bytes.
MIN_SECRET_BYTES = 16


class SecretsError(Exception):
    """A secrets file in the data folder cannot be used; the message says which and what to do.

    The gateway must not start then, nor replace the file: a reset API key file would
    reopen a closed gateway, a new fingerprint secret would orphan every fingerprint.
    """


def _read(path: Path) -> bytes | None:
    """The file's bytes, or None if it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretsError(
            f"cannot read {path}: {exc.strerror}; fix its permissions or the data folder's, "
            "then start again"
        ) from None


def read_secret(folder: Path) -> bytes | None:
    """The fingerprint secret, or None if none was made yet. Never writes."""
    path = folder / SECRET_FILE
    raw = _read(path)
    if raw is None:
        return None
    try:
        secret = bytes.fromhex(raw.decode("ascii").strip())
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        problem = f"is not hex ({exc})"
    else:
        if len(secret) >= MIN_SECRET_BYTES:
            return secret
        problem = f"holds {len(secret)} bytes, fewer than the {MIN_SECRET_BYTES} a secret needs"
    raise SecretsError(
        f"{path} {problem}: it is the secret behind every user fingerprint. Restore it from a "
        "backup; or delete it and a new one is made, after which new fingerprints no longer "
        "match those already recorded. Not starting"
    )


def load_or_create_secret(folder: Path) -> bytes:
    secret = read_secret(folder)
    if secret is None:
        secret = secrets.token_bytes(32)
        _write_private(folder / SECRET_FILE, secret.hex().encode())
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


Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class AdminTokenFile(msgspec.Struct):
    sha256: Sha256
    created: str

    @classmethod
    def read(cls, folder: Path) -> AdminTokenFile | None:
        """The stored token hash, or None if no token was made yet. Never writes."""
        path = folder / ADMIN_FILE
        raw = _read(path)
        if raw is None:
            return None
        try:
            return msgspec.json.decode(raw, type=cls)
        except msgspec.DecodeError as exc:
            raise SecretsError(
                f"{path} is damaged ({exc}), so the admin token cannot be checked. Start once "
                "from a terminal with --reset-admin-token to make a new token (shown once), "
                "set OLLAMA_GATEWAY_ADMIN_TOKEN, or restore the file from a backup. Not starting"
            ) from None


class AdminToken:
    """Who may read the usage log. Holds only the token's hash."""

    def __init__(self, token_hash: str, session_secret: bytes) -> None:
        self._hash = token_hash
        self._session_secret = session_secret
        # The browser's cookie holds a value derived from the token, not the token.
        self.session = self._session_of(token_hash)

    def _session_of(self, token_hash: str) -> str:
        return hmac.new(
            self._session_secret, b"admin-session:" + token_hash.encode(), hashlib.sha256
        ).hexdigest()

    def rehash(self, token_hash: str) -> None:
        """Follow a token made elsewhere (reset through another gateway on the same database)."""
        if token_hash != self._hash:
            self._hash = token_hash
            self.session = self._session_of(token_hash)

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
        if not reset and (stored := AdminTokenFile.read(folder)) is not None:
            return cls(stored.sha256, session_secret), None
        token = secrets.token_urlsafe(32)
        record = AdminTokenFile(sha256=sha256(token), created=datetime.now(UTC).isoformat())
        _write_private(folder / ADMIN_FILE, msgspec.json.encode(record))
        return cls(record.sha256, session_secret), token

    def check_token(self, presented: str) -> bool:
        return hmac.compare_digest(sha256(presented), self._hash)

    def check_session(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.session.encode())


# -- API keys --------------------------------------------------------------------

Limit = Annotated[int, Meta(ge=0)]
# A key's share of a busy upstream against other keys' (docs/queue.md): 1 is an equal share,
# 4 four times one; beyond these bounds a weight is a typo, not a policy.
Weight = Annotated[
    float,
    Meta(ge=0.01, le=100, description="The key's share of a busy upstream: 1 is an equal share."),
]
KeyPriority = Literal["interactive", "batch"]
# GPU budgets, in GPU-seconds. More than a day (or a 31-day month) of 4,096 GPUs, the most an
# upstream may have (upstreams.config.MAX_GPUS), is a mistake, not a budget.
MAX_GPU_DAY = 86_400 * 4096
MAX_GPU_MONTH = 31 * MAX_GPU_DAY
GpuDay = Annotated[
    float,
    Meta(ge=0, le=MAX_GPU_DAY, description="GPU-seconds per UTC day; 0: none."),
]
GpuMonth = Annotated[
    float,
    Meta(ge=0, le=MAX_GPU_MONTH, description="GPU-seconds per UTC calendar month; 0: none."),
]


class KeyLimits(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A key's own limits; None falls back to the gateway's per-key defaults, 0 means none."""

    rpm: Limit | None = None
    tokens_per_day: Limit | None = None
    streams: Limit | None = None
    # GPU budgets, in GPU-seconds as the records count them (upstreams.gputime).
    gpu_seconds_per_day: GpuDay | None = None
    gpu_seconds_per_month: GpuMonth | None = None


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
    # The accounting project of this key's calls when a call names none.
    project: str | None = None
    # Its calls' class in the fair queue (a call may lower its own with X-Priority: batch),
    # and its weight there against other keys.
    priority: KeyPriority = "interactive"
    weight: Weight = 1.0

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


class Keys(Protocol):
    """Where the API keys are kept. Reads come from memory: they run on every call."""

    @property
    def active(self) -> bool:
        """True once any key was ever made: from then on, asking needs a key."""
        ...

    def all(self) -> list[ApiKey]: ...

    def get(self, key_id: str) -> ApiKey | None: ...

    def verify(self, presented: str) -> ApiKey | None:
        """The live key `presented` is, or None."""
        ...

    async def learn(self, key_id: str) -> ApiKey | None:
        """Key `key_id` as stored where the keys are kept, when memory does not hold it: a
        key made through another gateway then works here, with its limits, from its first
        call, not only once this gateway re-reads the keys. None if there is no such key;
        CallError 503 if where the keys are kept cannot be asked."""
        ...

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
        """A new key: its stored form and the key itself, which is shown once."""
        ...

    async def update(self, key: ApiKey) -> None:
        """Store a changed key. A revoked key stays revoked."""
        ...

    def close(self) -> None:
        """Let go of what the keys hold (a connection, a thread)."""
        ...


def new_key(
    label: str,
    models: list[str] | None,
    limits: KeyLimits,
    *,
    project: str | None = None,
    priority: KeyPriority = "interactive",
    weight: float = 1.0,
) -> tuple[ApiKey, str]:
    """A new key's stored form and the key itself."""
    key_id = secrets.token_hex(4)
    plain = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=key_id,
        label=label,
        sha256=sha256(plain),
        created=datetime.now(UTC).isoformat(),
        models=models,
        limits=limits,
        project=project,
        priority=priority,
        weight=weight,
    )
    return key, plain


def key_id_of(presented: str) -> str | None:
    """The id an API key carries in the clear (`ohk_<id>_<secret>`), or None if `presented`
    is not shaped like one."""
    if not presented.startswith(KEY_PREFIX):
        return None
    return presented[len(KEY_PREFIX) :].split("_", 1)[0]


def verify_key(keys: Mapping[str, ApiKey], presented: str) -> ApiKey | None:
    """The live key among `keys` that `presented` is, or None. Constant time in the secret."""
    key_id = key_id_of(presented)
    if key_id is None:
        return None
    key = keys.get(key_id)
    # Compare even when the id is unknown, so timing says nothing about which ids exist.
    expected = key.sha256 if key else "0" * 64
    if hmac.compare_digest(sha256(presented), expected) and key and key.revoked is None:
        return key
    return None


class KeyRing:
    """The API keys, in `keys.json` in the data folder. Thread-safe; writes are atomic."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / KEYS_FILE
        self._lock = threading.Lock()
        raw = _read(self._path)
        try:
            keys = [] if raw is None else msgspec.json.decode(raw, type=list[ApiKey])
        except msgspec.DecodeError as exc:
            raise SecretsError(
                f"{self._path} is damaged ({exc}), so the API keys cannot be read. Restore it "
                "from a backup. Moving it aside drops every key, and with no key on record "
                "anyone who can reach the gateway may ask. Not starting"
            ) from None
        self._keys = {key.id: key for key in keys}

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
        with self._lock:
            self._keys[key.id] = key
            self._save()
        return key, plain

    async def update(self, key: ApiKey) -> None:
        with self._lock:
            self._keys[key.id] = key
            self._save()

    def verify(self, presented: str) -> ApiKey | None:
        return verify_key(self._keys, presented)

    async def learn(self, key_id: str) -> ApiKey | None:
        return None  # only this gateway writes the file, so memory holds every key

    def close(self) -> None:
        pass  # nothing held between writes


class Access:
    """Everything access control needs, opened once at startup: from the data folder
    (`open`), or from a database (access.pg_keys)."""

    def __init__(
        self,
        secret: bytes,
        admin: AdminToken,
        keys: Keys,
        tickets: Tickets | None = None,
        *,
        scope: str | None = None,
    ) -> None:
        self.secret = secret
        self.admin = admin
        self.keys = keys
        self.tickets: Tickets = tickets or MemoryTickets()
        # What names this gateway's shared state (limits and tickets in a Redis): gateways
        # with the same keys share it. Derived from the secret, never the secret itself.
        self.scope = scope or hmac.new(secret, b"scope", hashlib.sha256).hexdigest()[:16]

    def close(self) -> None:
        self.keys.close()

    @classmethod
    def open(
        cls, folder: Path, admin_token: str | None, *, reset: bool = False
    ) -> tuple[Access, str | None]:
        """The access state, and a newly made admin token to show once (or None)."""
        folder.mkdir(parents=True, exist_ok=True)
        secret = load_or_create_secret(folder)
        admin, new_token = AdminToken.setup(folder, admin_token, secret, reset=reset)
        return cls(secret, admin, KeyRing(folder)), new_token


def check_secrets(folder: Path, admin_token: str | None, *, reset: bool = False) -> bool:
    """Read every secrets file Access.open would use, writing nothing; SecretsError if one
    is damaged. True if any API key was ever made.

    For the start, before anything that cannot be undone: replaying the journal, making
    a token, writing a secret.
    """
    read_secret(folder)
    if not admin_token and not reset:
        AdminTokenFile.read(folder)
    return KeyRing(folder).active
