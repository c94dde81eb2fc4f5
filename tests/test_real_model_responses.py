"""The Responses front against a real model: llama.cpp's `llama-server` with SmolLM2-135M as
an upstream of kind openai, asked through the `openai` library's `responses.create`, whole and
streamed. The tokens are compared with what the server itself says: its own answer and usage
for the same question asked directly, and its /metrics counter of tokens generated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import openai
import pytest

from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import records, unique
from tests.llama import MODEL, LlamaServer

pytestmark = [pytest.mark.model, pytest.mark.timeout(2400)]

QUESTION = "Name three colours."
# Greedy (temperature 0), so the same question gets the same answer directly and through the
# gateway.
LIMIT = 24


def eventually(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def site(llama: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("real-responses") / "data"
    with start_gateway(data, "--upstream", f"l1={llama.url},kind=openai") as gateway:
        yield gateway
    assert "Traceback" not in gateway.logs(), gateway.logs()


def direct(llama: LlamaServer) -> tuple[str, int, int]:
    """The server's own answer and usage for QUESTION, asked of it directly."""
    with openai.OpenAI(base_url=llama.url + "/v1", api_key="none", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=LIMIT,
            temperature=0.0,
            top_p=1.0,
        )
    assert answer.usage is not None
    content = answer.choices[0].message.content or ""
    return content, answer.usage.prompt_tokens, answer.usage.completion_tokens


def test_whole_and_streamed_responses_count_as_the_server_counts(
    llama: LlamaServer, site: Gateway
) -> None:
    text, prompt_tokens, completion_tokens = direct(llama)
    project = unique("real-resp")
    client = openai.OpenAI(
        base_url=site.url + "/v1",
        api_key="none",
        default_headers={"X-Project": project},
        max_retries=0,
        timeout=120,
    )
    with client:
        before = llama.metrics()["tokens_predicted_total"]
        whole = client.responses.create(
            model=MODEL, input=QUESTION, max_output_tokens=LIMIT, temperature=0.0, top_p=1.0
        )
        events = list(
            client.responses.create(
                model=MODEL,
                input=QUESTION,
                max_output_tokens=LIMIT,
                temperature=0.0,
                top_p=1.0,
                stream=True,
            )
        )

    assert whole.output_text == text
    assert whole.usage is not None
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (
        prompt_tokens,
        completion_tokens,
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1  # streamed as it came, not whole
    assert "".join(deltas) == text
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == completion_tokens
    assert last.response.usage.input_tokens == prompt_tokens
    with site.client() as admin:
        eventually(lambda: len(records(admin, project=project)) == 2)
        found = records(admin, project=project)
    assert {r["front"] for r in found} == {"responses"}
    assert {(r["input_tokens"], r["output_tokens"]) for r in found} == {
        (prompt_tokens, completion_tokens)
    }
    # The server's own counter moved by exactly what both calls recorded.
    eventually(lambda: llama.metrics()["tokens_predicted_total"] - before == 2 * completion_tokens)
