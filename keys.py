"""Caller keys are never stored: only a keyed fingerprint of them.

A plain hash of a short key can be reversed by trying every key; an HMAC under a
secret that lives only in the data folder cannot, without that file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_FILE = "fingerprint.key"  # noqa: S105 (a file name, not a secret)


def load_or_create_secret(folder: Path) -> bytes:
    path = folder / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex())
    return secret


def fingerprint(secret: bytes, key: str) -> str:
    return "fp_" + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:20]
