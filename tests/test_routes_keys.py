"""routes/keys.py: create, list, relabel, limit and revoke API keys, in process through
httpx.ASGITransport. A key is shown once, when it is made; only its hash is kept. Each mistake
is a clear 4xx in the error shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from access.keys import KeyRing
from routes.keys import MAX_MODELS
from tests.asgi import Keyed, Local
from tests.helpers import ask, assert_error

pytestmark = pytest.mark.anyio

SYNC = "/api/v1/ai/ask_sync"
KEYS = "/api/v1/admin/keys"


async def test_keys_are_listed_without_secrets(keyed: Keyed) -> None:
    async with keyed.local.client() as admin:
        listed = (await admin.get(KEYS)).json()

    assert {k["label"] for k in listed} >= {"team", "qwen only", "slow"}
    text = json.dumps(listed)
    for made in keyed.keys.values():
        assert made["key"] not in text
    assert "sha256" not in text
    stored = (keyed.local.data / "keys.json").read_text()
    assert all(made["key"] not in stored for made in keyed.keys.values())


async def test_a_key_can_be_relabelled(keyed: Keyed) -> None:
    key_id = keyed.keys["slow"]["info"]["id"]
    async with keyed.local.client() as admin:
        response = await admin.patch(f"{KEYS}/{key_id}", json={"label": "slow lane"})

    assert response.json()["label"] == "slow lane"
    assert response.json()["limits"] == {"rpm": 1}


async def test_a_patch_in_flight_cannot_undo_a_revocation(keyed: Keyed) -> None:
    key_id = keyed.keys["team"]["info"]["id"]
    body = json.dumps({"label": "renamed"}).encode()
    waiting, revoked = asyncio.Event(), asyncio.Event()

    async def late_body() -> AsyncIterator[bytes]:
        # The PATCH's head goes first; its body only after the key is revoked.
        waiting.set()
        await revoked.wait()
        yield body

    async with keyed.local.client() as admin:
        patch = asyncio.ensure_future(
            admin.patch(
                f"{KEYS}/{key_id}",
                content=late_body(),
                headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
            )
        )
        await waiting.wait()
        assert (await admin.delete(f"{KEYS}/{key_id}")).json()["revoked"]
        revoked.set()
        answer = await patch
        key = next(k for k in (await admin.get(KEYS)).json() if k["id"] == key_id)
    async with keyed.client("team") as client:
        asked = await client.post(SYNC, json=ask())

    # The PATCH sees the key as it is once its body is read: revoked, so refused.
    assert answer.status_code == 409
    assert key["label"] == "team"
    assert key["revoked"]
    assert_error(asked, 401, "unauthorized")


async def test_a_new_key_is_shown_once_with_what_it_may_do(keyed: Keyed) -> None:
    body = {"label": "ci", "models": ["qwen", "llama3:8b"], "limits": {"rpm": 5, "streams": 0}}
    async with keyed.local.client() as admin:
        response = await admin.post(KEYS, json=body)
        listed = (await admin.get(KEYS)).json()

    assert response.status_code == 201
    made = response.json()
    info = made["info"]
    assert made["key"].startswith(f"ohk_{info['id']}_")
    assert (info["label"], info["models"], info["limits"]) == (
        "ci",
        ["qwen", "llama3:8b"],
        {"rpm": 5, "streams": 0},
    )
    assert info["revoked"] is None
    assert info["fingerprint"].startswith("fp_")
    assert info in listed
    assert made["key"] not in json.dumps(listed)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"label": ""},
        {"label": "x" * 101},
        {"label": "ok", "models": ["../etc"]},
        {"label": "ok", "limits": {"rpm": -1}},
        {"label": "ok", "colour": "blue"},
    ],
)
async def test_a_bad_key_is_422(keyed: Keyed, body: dict[str, object]) -> None:
    async with keyed.local.client() as admin:
        response = await admin.post(KEYS, json=body)

    assert_error(response, 422, "invalid_request")


async def test_models_absent_leave_them_and_null_allows_every_model(keyed: Keyed) -> None:
    key_id = keyed.keys["qwen-only"]["info"]["id"]
    async with keyed.local.client() as admin:
        relabelled = (await admin.patch(f"{KEYS}/{key_id}", json={"label": "q"})).json()
        opened = (await admin.patch(f"{KEYS}/{key_id}", json={"models": None})).json()
    async with keyed.client("qwen-only") as client:
        asked = await client.post(SYNC, json=ask("llama3"))

    assert relabelled["models"] == ["qwen"]
    assert opened["models"] is None
    assert opened["label"] == "q"
    assert asked.status_code == 200


async def test_keys_are_the_admins_alone(keyed: Keyed) -> None:
    async with keyed.client("team") as holder:
        listed = await holder.get(KEYS)
        made = await holder.post(KEYS, json={"label": "mine"})

    assert_error(listed, 401, "unauthorized")
    assert_error(made, 401, "unauthorized")


async def test_keys_survive_a_restart(keyed: Keyed) -> None:
    ring = KeyRing(keyed.local.data)

    assert {key.id for key in ring.all()} == {k["info"]["id"] for k in keyed.keys.values()}
    assert ring.verify(keyed.keys["team"]["key"]) is not None


# -- each mistake is a clear 4xx --------------------------------------------------------


@pytest.fixture
async def admin(local: Local) -> AsyncIterator[httpx.AsyncClient]:
    async with local.client() as client:
        yield client


async def make_key(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post(KEYS, json={"label": "team", **body})
    assert response.status_code == 201, response.text
    info: dict[str, Any] = response.json()["info"]
    return info


@pytest.mark.parametrize("label", ["two\nlines", "nul\x00", "tab\tbed", "bell\x07", "c1\x85"])
async def test_a_label_with_a_control_character_is_422(
    admin: httpx.AsyncClient, label: str
) -> None:
    response = await admin.post(KEYS, json={"label": label})

    error = assert_error(response, 422, "invalid_request")
    assert "$.label" in error["message"]
    assert (await admin.get(KEYS)).json() == []


async def test_a_relabel_with_a_control_character_is_422(admin: httpx.AsyncClient) -> None:
    key = await make_key(admin)

    response = await admin.patch(f"{KEYS}/{key['id']}", json={"label": "a\r\nb"})

    assert_error(response, 422, "invalid_request")
    assert (await admin.get(KEYS)).json()[0]["label"] == "team"


async def test_a_label_may_hold_any_printable_text(admin: httpx.AsyncClient) -> None:
    key = await make_key(admin, label="Équipe 🦙 «A» / ops")

    assert key["label"] == "Équipe 🦙 «A» / ops"


@pytest.mark.parametrize("method", ["post", "patch"])
async def test_a_key_with_too_many_models_is_422(admin: httpx.AsyncClient, method: str) -> None:
    key = await make_key(admin)
    models = [f"model{i}" for i in range(10_000)]

    if method == "post":
        response = await admin.post(KEYS, json={"label": "many", "models": models})
    else:
        response = await admin.patch(f"{KEYS}/{key['id']}", json={"models": models})

    error = assert_error(response, 422, "invalid_request")
    assert "$.models" in error["message"]
    assert [k["models"] for k in (await admin.get(KEYS)).json()] == [None]


async def test_a_key_may_name_up_to_the_cap_of_models(admin: httpx.AsyncClient) -> None:
    models = [f"model{i}:latest" for i in range(MAX_MODELS)]

    key = await make_key(admin, models=models)

    assert key["models"] == models


@pytest.mark.parametrize("name", ["../x", "a" * 201, "host:1/x", ""])
async def test_each_model_name_is_checked(admin: httpx.AsyncClient, name: str) -> None:
    response = await admin.post(KEYS, json={"label": "x", "models": ["llama3", name]})

    error = assert_error(response, 422, "invalid_request")
    assert "$.models[1]" in error["message"]


async def test_revoking_a_revoked_key_is_409(admin: httpx.AsyncClient) -> None:
    key = await make_key(admin)
    first = await admin.delete(f"{KEYS}/{key['id']}")

    again = await admin.delete(f"{KEYS}/{key['id']}")

    assert first.status_code == 200
    error = assert_error(again, 409, "key_revoked")
    assert "revoked" in error["message"]
    # The first revocation's time stands.
    assert (await admin.get(KEYS)).json()[0]["revoked"] == first.json()["revoked"]


async def test_changing_a_revoked_key_is_409(admin: httpx.AsyncClient) -> None:
    key = await make_key(admin, models=["llama3"])
    await admin.delete(f"{KEYS}/{key['id']}")

    response = await admin.patch(f"{KEYS}/{key['id']}", json={"label": "renamed", "models": None})

    assert_error(response, 409, "key_revoked")
    [stored] = (await admin.get(KEYS)).json()
    assert (stored["label"], stored["models"]) == ("team", ["llama3"])
    assert stored["revoked"]


@pytest.mark.parametrize("method", ["patch", "delete"])
async def test_an_unknown_key_is_404(admin: httpx.AsyncClient, method: str) -> None:
    response = await admin.request(method.upper(), f"{KEYS}/nope", json={"label": "x"})

    assert_error(response, 404, "key_not_found")


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_limit_the_gateway_does_not_know_is_422_not_ignored(
    admin: httpx.AsyncClient, method: str
) -> None:
    """A misspelt limit (`requests_per_minute` for `rpm`) must not make a key without it."""
    body = {"label": "team", "limits": {"requests_per_minute": 10}}
    if method == "POST":
        response = await admin.post(KEYS, json=body)
    else:
        key = await make_key(admin)
        response = await admin.patch(f"{KEYS}/{key['id']}", json=body)

    error = assert_error(response, 422, "invalid_request")
    assert "requests_per_minute" in error["message"]
    assert len((await admin.get(KEYS)).json()) == (0 if method == "POST" else 1)
