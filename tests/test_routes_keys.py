"""routes/keys.py: create, list, relabel, limit and revoke API keys, in process through
httpx.ASGITransport. A key is shown once, when it is made; only its hash is kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from access.keys import KeyRing
from tests.asgi import Keyed
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


async def test_revoking_twice_keeps_the_first_date(keyed: Keyed) -> None:
    key_id = keyed.keys["revoked"]["info"]["id"]
    async with keyed.local.client() as admin:
        first = (await admin.delete(f"{KEYS}/{key_id}")).json()
        second = (await admin.delete(f"{KEYS}/{key_id}")).json()

    assert first["revoked"]
    assert second["revoked"] == first["revoked"]


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_an_unknown_key_is_404(keyed: Keyed, method: str) -> None:
    async with keyed.local.client() as admin:
        response = await admin.request(method, f"{KEYS}/nosuchkey", json={"label": "x"})

    assert_error(response, 404, "key_not_found")


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
