"""GET /v1/models and /v1/models/{model} in-process: OpenAI's shape as before for OpenAI's
clients, Anthropic's (paged, its errors) for a request with `anthropic-version`, and the same
models for the same key either way."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from routes.anthropic.models import EPOCH, created_at
from tests.asgi import Keyed, Local
from tests.test_fronts import openai_error
from tests.test_routes_anthropic import anthropic_error, speaking

pytestmark = pytest.mark.anyio

# The stand-in's models, in its order, and when it says each was changed.
NAMES = ["llama3:latest", "qwen:latest", "mistral:latest", "custom-model:latest"]
CHANGED = "2025-01-15T10:20:30Z"


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["data"]]


async def test_without_the_header_the_openai_shape_is_unchanged(local: Local) -> None:
    async with local.client() as client:
        listed = await client.get("/v1/models")
        one = await client.get("/v1/models/llama3")
        missing = await client.get("/v1/models/nope")

    assert listed.json() == {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 1736936430, "owned_by": "library"}
            for name in NAMES
        ],
    }
    assert one.json() == {
        "id": "llama3",
        "object": "model",
        "created": 1736936430,
        "owned_by": "library",
    }
    openai_error(missing, 404, None, "nope")


async def test_the_list_in_anthropics_shape(local: Local) -> None:
    async with speaking(local) as client:
        listed = await client.get("/v1/models")

    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body == {
        "data": [
            {
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": CHANGED,
                "lifecycle": "active",
                "max_input_tokens": None,
            }
            for name in NAMES
        ],
        "has_more": False,
        "first_id": NAMES[0],
        "last_id": NAMES[-1],
    }
    assert listed.headers["request-id"] == listed.headers["x-request-id"]


async def test_pages_forward_by_after_id_and_back_by_before_id(local: Local) -> None:
    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    async with speaking(local) as client:
        params: dict[str, Any] = {"limit": 3}
        while True:
            page = (await client.get("/v1/models", params=params)).json()
            pages.append(page)
            seen += [m["id"] for m in page["data"]]
            if not page["has_more"]:
                break
            params = {"limit": 3, "after_id": page["last_id"]}
        back = await client.get("/v1/models", params={"limit": 2, "before_id": NAMES[3]})
        first = await client.get("/v1/models", params={"limit": 5, "before_id": NAMES[1]})
        past_the_end = await client.get("/v1/models", params={"after_id": NAMES[3]})

    assert seen == NAMES
    assert [(p["has_more"], p["first_id"], p["last_id"]) for p in pages] == [
        (True, NAMES[0], NAMES[2]),
        (False, NAMES[3], NAMES[3]),
    ]
    # Paging back: `has_more` says whether models lie before the page.
    assert ids(back) == NAMES[1:3]
    assert (back.json()["has_more"], back.json()["first_id"]) == (True, NAMES[1])
    assert ids(first) == NAMES[:1]
    assert first.json()["has_more"] is False
    assert past_the_end.json() == {"data": [], "has_more": False, "first_id": None, "last_id": None}


async def test_the_sdks_lifecycle_filter(local: Local) -> None:
    async with speaking(local) as client:
        active = await client.get("/v1/models?lifecycle[]=active&lifecycle[]=deprecated")
        retired = await client.get("/v1/models?lifecycle[]=retired")

    assert ids(active) == NAMES
    # Every model the gateway lists is active.
    assert ids(retired) == []


async def test_one_model_in_anthropics_shape(local: Local) -> None:
    async with speaking(local) as client:
        one = await client.get("/v1/models/llama3")

    assert one.status_code == 200, one.text
    assert one.json() == {
        "type": "model",
        "id": "llama3",
        "display_name": "llama3",
        "created_at": CHANGED,
        "lifecycle": "active",
        # The model's own page (Ollama's /api/show) says its context length.
        "max_input_tokens": 8192,
    }
    assert one.headers["request-id"] == one.headers["x-request-id"]


async def test_an_unknown_model_is_a_404_in_anthropics_shape(local: Local) -> None:
    async with speaking(local) as client:
        missing = await client.get("/v1/models/nope")
        bad_name = await client.get("/v1/models/..%2Fx")

    anthropic_error(missing, 404, "not_found_error", "nope")
    anthropic_error(bad_name, 400, "invalid_request_error", "model_id")


BAD_PAGING = [
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("limit=1&limit=2", "more than once"),
    ("after_id=nope", "after_id: 'nope' is not a model of this list"),
    ("before_id=nope", "before_id"),
    ("after_id=null", "after_id"),
    ("after_id=llama3:latest&before_id=qwen:latest", "one of them at most"),
    ("lifecycle[]=gone", "lifecycle"),
]


@pytest.mark.parametrize(("query", "says"), BAD_PAGING)
async def test_bad_paging_is_a_400_invalid_request_error(
    local: Local, query: str, says: str
) -> None:
    async with speaking(local) as client:
        response = await client.get(f"/v1/models?{query}")

    anthropic_error(response, 400, "invalid_request_error", says)


async def test_an_unknown_version_is_a_400_as_on_messages(local: Local) -> None:
    async with local.client() as client:
        response = await client.get("/v1/models", headers={"anthropic-version": "1999-01-01"})

    anthropic_error(response, 400, "invalid_request_error", "2023-06-01")


async def test_a_key_sees_its_models_in_either_shape(keyed: Keyed) -> None:
    qwen = keyed.keys["qwen-only"]["key"]
    async with speaking(keyed.local, admin=False) as client:
        nobody = await client.get("/v1/models")
        wrong = await client.get("/v1/models", headers={"x-api-key": "x"})
        by_header = await client.get("/v1/models", headers={"x-api-key": qwen})
        by_bearer = await client.get("/v1/models", headers={"Authorization": f"Bearer {qwen}"})
        allowed = await client.get("/v1/models/qwen", headers={"x-api-key": qwen})
        refused = await client.get("/v1/models/llama3", headers={"x-api-key": qwen})
    async with keyed.client("qwen-only") as openai_client:
        openai_listed = await openai_client.get("/v1/models")
        openai_refused = await openai_client.get("/v1/models/llama3")

    anthropic_error(nobody, 401, "authentication_error", "x-api-key header is required")
    anthropic_error(wrong, 401, "authentication_error", "not valid")
    assert ids(by_header) == ids(by_bearer) == ids(openai_listed) == ["qwen:latest"]
    assert allowed.json()["id"] == "qwen"
    anthropic_error(refused, 403, "permission_error", "llama3")
    openai_error(openai_refused, 403, None, "llama3")


@pytest.mark.parametrize(
    ("when", "shown"),
    [
        ("2025-01-15T10:20:30Z", "2025-01-15T10:20:30Z"),
        # Ollama's: nanoseconds and the server's own offset.
        ("2024-05-01T12:34:56.123456789-07:00", "2024-05-01T19:34:56Z"),
        # Go's zero time: what Ollama writes for a time it does not know.
        ("0001-01-01T00:00:00Z", EPOCH),
        ("2024-05-01T12:34:56", EPOCH),
        ("yesterday", EPOCH),
        (None, EPOCH),
    ],
)
def test_created_at_is_rfc_3339_utc_or_the_epoch(when: str | None, shown: str) -> None:
    assert created_at(when) == shown
