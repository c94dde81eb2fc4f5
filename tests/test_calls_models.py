"""Model names as Ollama reads them: a key's model list means exactly those models, and a
cloud model (run on ollama.com under the server's account) is told apart by its tag."""

from __future__ import annotations

import pytest

from access.keys import ApiKey
from calls.models import canonical, is_cloud
from tests.asgi import Local
from tests.helpers import ask

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("name", "same"),
    [
        ("llama3", "llama3:latest"),
        ("Llama3:Latest", "llama3:latest"),
        ("library/llama3", "llama3:latest"),
        ("registry.ollama.ai/library/llama3:8b", "llama3:8b"),
        ("hf.co/user/model", "hf.co/user/model:latest"),
        ("user/model:q4", "user/model:q4"),
    ],
)
def test_canonical_names_are_what_ollama_reads_as_one_model(name: str, same: str) -> None:
    assert canonical(name) == same


@pytest.mark.parametrize(
    ("name", "cloud"),
    [
        ("gpt-oss:120b-cloud", True),
        ("llama3:cloud", True),
        ("llama3:CLOUD", True),
        ("llama3:70b-cloud", True),
        ("llama3", False),
        ("llama3:local", False),
        ("cloud", False),
        ("cloud-model:latest", False),
        ("llama3:cloudy", False),
    ],
)
def test_cloud_models_are_told_by_their_tag(name: str, cloud: bool) -> None:
    assert is_cloud(name) is cloud


def key(*models: str) -> ApiKey:
    return ApiKey(id="k", label="k", sha256="0" * 64, created="", models=list(models))


@pytest.mark.parametrize("model", ["llama3", "llama3:latest", "LLAMA3", "library/llama3"])
def test_a_key_for_llama3_may_use_llama3_however_spelt(model: str) -> None:
    assert key("llama3").allows(model)
    assert key("llama3:latest").allows(model)


@pytest.mark.parametrize(
    "model", ["llama3:cloud", "llama3:70b-cloud", "llama3:local", "llama3:8b", "llama3.1"]
)
def test_a_key_for_llama3_may_not_use_another_tag(model: str) -> None:
    assert not key("llama3").allows(model)


async def test_a_key_for_llama3_is_refused_llama3_cloud_through_the_gateway(local: Local) -> None:
    async with local.client() as admin:
        made = await admin.post("/api/v1/admin/keys", json={"label": "l", "models": ["llama3"]})
    secret = made.json()["key"]
    async with local.client(admin=False, Authorization=f"Bearer {secret}") as client:
        cloud = await client.post("/api/v1/ai/ask_sync", json=ask("llama3:cloud"))
        plain = await client.post("/api/v1/ai/ask_sync", json=ask("llama3:latest"))

    assert cloud.status_code == 403
    assert cloud.json()["error"]["code"] == "model_not_allowed"
    assert plain.status_code == 200
