"""access/keys.py: the admin token, API keys and fingerprints, on their own;
and damaged secrets files, each of which stops the start with one line, rewriting nothing.

No secret is stored as itself: each test that makes one also looks for it on disk. A reset
keys.json would reopen a gateway that keys had closed, and a new fingerprint secret would
silently orphan every fingerprint already recorded, so the gateway refuses instead of repairing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import msgspec
import pytest

from access import keys
from access.keys import (
    ADMIN_FILE,
    KEYS_FILE,
    SECRET_FILE,
    Access,
    AdminToken,
    ApiKey,
    KeyLimits,
    KeyRing,
    SecretsError,
    check_secrets,
    fingerprint,
    load_or_create_secret,
)
from tests.gateway_proc import start_gateway
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.anyio


def files_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def mode(path: Path) -> str:
    return oct(path.stat().st_mode)[-3:]


# -- the admin token -------------------------------------------------------------------


def test_a_configured_admin_token_is_never_written_down(tmp_path: Path) -> None:
    admin, new = AdminToken.setup(tmp_path, "configured-token", b"secret")

    assert new is None
    assert admin.check_token("configured-token")
    assert not admin.check_token("configured-token ")
    assert not (tmp_path / ADMIN_FILE).exists()


def test_the_first_start_makes_a_token_once_and_keeps_only_its_hash(tmp_path: Path) -> None:
    first, token = AdminToken.setup(tmp_path, None, b"secret")
    again, none = AdminToken.setup(tmp_path, None, b"secret")

    assert token is not None
    assert none is None
    assert first.check_token(token)
    assert again.check_token(token)
    stored = json.loads((tmp_path / ADMIN_FILE).read_text())
    assert stored["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert mode(tmp_path / ADMIN_FILE) == "600"
    assert token not in files_text(tmp_path)


def test_a_reset_makes_a_new_token_and_the_old_one_stops_working(tmp_path: Path) -> None:
    _, old = AdminToken.setup(tmp_path, None, b"secret")
    admin, new = AdminToken.setup(tmp_path, None, b"secret", reset=True)

    assert old is not None
    assert new is not None
    assert new != old
    assert admin.check_token(new)
    assert not admin.check_token(old)


def test_the_session_is_derived_from_the_token_not_the_token(tmp_path: Path) -> None:
    admin = AdminToken(keys.sha256("token"), b"secret")
    other_secret = AdminToken(keys.sha256("token"), b"other")
    other_token = AdminToken(keys.sha256("other"), b"secret")

    assert admin.check_session(admin.session)
    assert not admin.check_session(other_secret.session)
    assert not admin.check_session(other_token.session)
    assert "token" not in admin.session
    assert not admin.check_token(admin.session)


# -- fingerprints ----------------------------------------------------------------------


def test_the_fingerprint_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)

    assert load_or_create_secret(tmp_path) == secret
    assert len(secret) == 32
    assert mode(tmp_path / SECRET_FILE) == "600"


def test_a_fingerprint_is_stable_per_secret_and_hides_the_key() -> None:
    one = fingerprint(b"a" * 32, "user-key-1")

    assert one == fingerprint(b"a" * 32, "user-key-1")
    assert one != fingerprint(b"b" * 32, "user-key-1")
    assert one != fingerprint(b"a" * 32, "user-key-2")
    assert one.startswith("fp_")
    assert len(one) == 23
    assert "user-key-1" not in one


# -- API keys --------------------------------------------------------------------------


async def test_a_new_key_is_verified_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)

    key, plain = await ring.create("team", None, KeyLimits(rpm=5))

    assert plain.startswith(f"ohk_{key.id}_")
    assert ring.verify(plain) == key
    assert key.sha256 == hashlib.sha256(plain.encode()).hexdigest()
    assert plain not in files_text(tmp_path)
    assert mode(tmp_path / KEYS_FILE) == "600"
    assert KeyRing(tmp_path).get(key.id) == key


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "not-a-key",
        "ohk_",
        "ohk_unknown_whatever",
    ],
)
async def test_anything_but_a_live_key_is_not_verified(tmp_path: Path, presented: str) -> None:
    ring = KeyRing(tmp_path)
    await ring.create("team", None, KeyLimits())

    assert ring.verify(presented) is None


async def test_a_key_with_a_changed_secret_part_is_not_verified(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    _, plain = await ring.create("team", None, KeyLimits())

    assert ring.verify(plain[:-4] + "AAAA") is None
    assert ring.verify(plain + "x") is None


async def test_a_revoked_key_is_not_verified_but_keys_stay_required(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    key, plain = await ring.create("only", None, KeyLimits())

    await ring.update(msgspec.structs.replace(key, revoked="2025-01-01T00:00:00+00:00"))

    assert ring.verify(plain) is None
    assert ring.active
    assert KeyRing(tmp_path).active


def test_no_keys_means_asking_is_open(tmp_path: Path) -> None:
    assert not KeyRing(tmp_path).active


async def test_keys_are_listed_oldest_first(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    made = [(await ring.create(f"k{n}", None, KeyLimits()))[0] for n in range(3)]

    assert [key.id for key in ring.all()] == [key.id for key in made]


@pytest.mark.parametrize(
    ("models", "model", "allowed"),
    [
        (None, "anything:at-all", True),
        (["qwen"], "qwen", True),
        (["qwen"], "qwen:latest", True),
        (["qwen"], "qwen:7b", False),
        (["qwen"], "qwen:cloud", False),
        (["qwen"], "llama3", False),
        (["qwen:7b"], "qwen:7b", True),
        (["qwen:7b"], "qwen", False),
        (["qwen:7b"], "qwen:14b", False),
        ([], "qwen", False),
    ],
)
def test_a_key_may_be_limited_to_models(
    models: list[str] | None, model: str, allowed: bool
) -> None:
    key = ApiKey(id="k", label="k", sha256="0" * 64, created="now", models=models)

    assert key.allows(model) is allowed


async def test_a_keys_fingerprint_is_public_and_not_the_key(tmp_path: Path) -> None:
    key, plain = await KeyRing(tmp_path).create("team", None, KeyLimits())

    assert key.fingerprint == f"fp_{key.sha256[:20]}"
    assert plain not in key.fingerprint


# -- the access state ------------------------------------------------------------------


def test_access_opens_a_folder_that_does_not_exist_yet(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"

    access, token = Access.open(folder, None)

    assert token is not None
    assert access.admin.check_token(token)
    assert access.secret == load_or_create_secret(folder)
    assert not access.keys.active


# -- damaged secrets files --------------------------------------------------------------

GOOD_SECRET = (b"\x01" * 32).hex().encode()


def folder_with(tmp_path: Path, name: str, content: bytes) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / name).write_bytes(content)
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize(
    "content",
    [b"", b"zz" * 32, b"\xff\xfe" * 32, b"00" * 15, b"   \n"],
    ids=["empty", "not-hex", "binary", "15-bytes", "blank"],
)
def test_a_damaged_or_short_fingerprint_secret_is_refused(tmp_path: Path, content: bytes) -> None:
    folder = folder_with(tmp_path, SECRET_FILE, content)

    with pytest.raises(SecretsError) as raised:
        load_or_create_secret(folder)

    assert str(folder / SECRET_FILE) in str(raised.value)
    assert "Restore it from a backup" in str(raised.value)
    assert files_of(folder) == {SECRET_FILE: content}


def test_a_fingerprint_secret_of_16_bytes_or_more_is_read(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, SECRET_FILE, b"ab" * 16 + b"\n")

    assert load_or_create_secret(folder) == b"\xab" * 16


def test_a_missing_fingerprint_secret_is_made(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)

    assert len(secret) == 32
    assert (tmp_path / SECRET_FILE).read_text() == secret.hex()


@pytest.mark.parametrize(
    "content",
    [b"", b'{"sha256": "ab', b"not json", b'{"sha256": "short", "created": "x"}', b"[]"],
    ids=["empty", "truncated", "not-json", "bad-hash", "wrong-shape"],
)
def test_a_damaged_admin_token_file_is_refused(tmp_path: Path, content: bytes) -> None:
    folder = folder_with(tmp_path, ADMIN_FILE, content)

    with pytest.raises(SecretsError) as raised:
        AdminToken.setup(folder, None, b"s" * 32)

    assert str(folder / ADMIN_FILE) in str(raised.value)
    assert "--reset-admin-token" in str(raised.value)
    assert files_of(folder) == {ADMIN_FILE: content}


def test_a_configured_admin_token_does_not_need_the_file(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, ADMIN_FILE, b"not json")

    admin, shown = AdminToken.setup(folder, "configured-token", b"s" * 32)

    assert admin.check_token("configured-token")
    assert shown is None
    assert (folder / ADMIN_FILE).read_bytes() == b"not json"


def test_resetting_the_admin_token_replaces_a_damaged_file(tmp_path: Path) -> None:
    # Asked for explicitly: the operator means to make a new token.
    folder = folder_with(tmp_path, ADMIN_FILE, b"not json")

    admin, shown = AdminToken.setup(folder, None, b"s" * 32, reset=True)

    assert shown is not None
    assert admin.check_token(shown)


@pytest.mark.parametrize(
    "content",
    [b"", b'[{"id": "ab12", "label": "x"', b"keys!", b'[{"id": 1}]', b"{}"],
    ids=["empty", "truncated", "not-json", "wrong-field", "not-a-list"],
)
def test_a_damaged_keys_file_is_refused(tmp_path: Path, content: bytes) -> None:
    folder = folder_with(tmp_path, KEYS_FILE, content)

    with pytest.raises(SecretsError) as raised:
        KeyRing(folder)

    assert str(folder / KEYS_FILE) in str(raised.value)
    assert "Restore it from a backup" in str(raised.value)
    assert files_of(folder) == {KEYS_FILE: content}


def test_keys_survive_a_reopen(tmp_path: Path) -> None:
    made, _ = asyncio.run(KeyRing(tmp_path).create("team", ["llama3"], KeyLimits(rpm=5)))

    assert KeyRing(tmp_path).get(made.id) == made


def test_an_unreadable_secrets_file_is_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    (folder / KEYS_FILE).mkdir(parents=True)  # a folder where the file should be

    with pytest.raises(SecretsError, match=f"cannot read {folder / KEYS_FILE}"):
        KeyRing(folder)


@pytest.mark.parametrize("name", [SECRET_FILE, ADMIN_FILE, KEYS_FILE])
def test_checking_the_secrets_writes_nothing(tmp_path: Path, name: str) -> None:
    folder = folder_with(tmp_path, name, b"\x00garbage")

    with pytest.raises(SecretsError):
        check_secrets(folder, None)

    assert files_of(folder) == {name: b"\x00garbage"}


def test_checking_the_secrets_of_a_new_folder_writes_nothing(tmp_path: Path) -> None:
    assert check_secrets(tmp_path / "new", None) is False
    assert not (tmp_path / "new").exists()


def test_checking_the_secrets_says_whether_keys_exist(tmp_path: Path) -> None:
    access, _ = Access.open(tmp_path, "token")
    assert check_secrets(tmp_path, None) is False
    asyncio.run(access.keys.create("team", None, KeyLimits()))

    assert check_secrets(tmp_path, "token") is True


@pytest.mark.server
@pytest.mark.parametrize(
    ("name", "content"),
    [
        (KEYS_FILE, b'[{"id": "ab12cd34", "label": "team", "sha2'),
        (ADMIN_FILE, b""),
        (SECRET_FILE, b"not a hex secret"),
    ],
    ids=["keys-truncated", "admin-token-empty", "fingerprint-not-hex"],
)
def test_the_gateway_refuses_to_start_on_a_damaged_secrets_file(
    standin: StandIn, tmp_path: Path, name: str, content: bytes
) -> None:
    data = folder_with(tmp_path, name, content)
    # No admin token in the environment: the stored one is the only one.
    server = start_gateway(
        data, "--ollama", standin.url, env={"OLLAMA_GATEWAY_ADMIN_TOKEN": ""}, wait=False
    )
    code = server.wait()
    server.stop()
    logs = server.logs()

    assert code == 1
    assert "Traceback" not in logs
    errors = [line for line in logs.splitlines() if " ERROR " in line]
    assert len(errors) == 1, logs
    assert str(data / name) in errors[0]
    assert "Not starting" in errors[0]
    # Refused before anything else: nothing rewritten, no journal replayed, nothing made.
    assert files_of(data) == {name: content}
