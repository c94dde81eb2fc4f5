"""The admin key endpoints' edges, in-process: each mistake is a clear 4xx in the error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from routes.keys import MAX_MODELS
from tests.asgi import Local
from tests.helpers import assert_error

pytestmark = pytest.mark.anyio

KEYS = "/api/v1/admin/keys"


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
