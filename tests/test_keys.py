"""Damaged secrets files: each one stops the start with one line, and nothing is rewritten.

A reset keys.json would reopen a gateway that keys had closed, and a new fingerprint
secret would silently orphan every fingerprint already recorded, so the gateway refuses
instead of repairing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from access.keys import (
    ADMIN_FILE,
    KEYS_FILE,
    SECRET_FILE,
    Access,
    AdminToken,
    KeyLimits,
    KeyRing,
    SecretsError,
    check_secrets,
    load_or_create_secret,
)
from tests.gateway_proc import start_gateway
from tests.ollama_standin import StandIn

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
