"""The Anthropic front with a real model: llama.cpp's `llama-server` with SmolLM2-135M behind
the gateway (an upstream of kind openai), asked by the `anthropic` SDK unchanged.

The same greedy question is asked of llama-server directly (its Chat Completions) and through
the gateway; the text and the token counts must be llama-server's own, whole, streamed and
counted (count_tokens).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import records, unique
from tests.llama import MODEL, LlamaServer

pytestmark = [pytest.mark.model, pytest.mark.timeout(1200)]

QUESTION = "Name three colours."
SYSTEM = "You answer briefly."
# Greedy, so that the same question gets the same answer, directly or through the gateway.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def site(llama: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("anthropic-real") / "data"
    with start_gateway(data_dir, "--upstream", f"l1={llama.url},kind=openai") as gateway:
        yield gateway
    assert "Traceback" not in gateway.logs(), gateway.logs()


def direct(llama: LlamaServer, max_tokens: int) -> dict[str, Any]:
    """llama-server's own answer and usage for the question."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, **GREEDY}
    response = httpx.post(llama.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_the_sdk_gets_llama_servers_own_text_and_counts(llama: LlamaServer, site: Gateway) -> None:
    expected = direct(llama, 24)
    text = expected["choices"][0]["message"]["content"]
    usage = expected["usage"]
    project = unique("an-real")
    client = anthropic.Anthropic(
        base_url=site.url,
        api_key="unused-while-no-key-exists",
        default_headers={"X-Project": project},
        max_retries=0,
        timeout=120,
    )
    asked: Any = {
        "model": MODEL,
        "max_tokens": 24,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": QUESTION}],
        "extra_body": GREEDY,
    }

    with client:
        whole = client.messages.create(**asked)
        with client.messages.stream(**asked) as stream:
            pieces = list(stream.text_stream)
            final = stream.get_final_message()
        counted = client.messages.count_tokens(
            model=MODEL, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]
        )

    assert whole.content[0].text == text
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert whole.stop_reason == ("max_tokens" if usage["completion_tokens"] == 24 else "end_turn")
    assert len(pieces) > 1  # streamed as it came, not whole
    assert "".join(pieces) == text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert counted.input_tokens == usage["prompt_tokens"]
    with site.client(timeout=30) as admin:
        deadline = time.monotonic() + 15
        while len(found := records(admin, project=project)) < 3:
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
    counts, streamed, asked_whole = found  # newest first
    for record in (asked_whole, streamed):
        assert record["front"] == "anthropic"
        assert (record["input_tokens"], record["output_tokens"]) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        assert record["tokens_estimated"] is False
        assert record["eval_seconds"] > 0  # llama-server's own timings
    assert counts["endpoint"] == "/v1/messages/count_tokens"
    assert counts["input_tokens"] == usage["prompt_tokens"]
