"""LiteLLM's `ollama/` and `ollama_chat/` providers, unchanged, against the gateway's Ollama
front. Run with LiteLLM's own interpreter (tests/real_clients.py installs it apart from the
gateway's), inside a network namespace with nothing but loopback, by tests/litellm_smoke.py:
LiteLLM fetches a model price list from the internet at import unless
LITELLM_LOCAL_MODEL_COST_MAP is set, and the namespace makes sure nothing else leaves either.

Reads GATEWAY, KEY, PROJECT and MODEL from the environment and prints what each call gave
back (or the exception it raised) as one JSON object.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm  # type: ignore[import-not-found]

GATEWAY, KEY = os.environ["GATEWAY"], os.environ["KEY"]
PROJECT, MODEL = os.environ["PROJECT"], os.environ["MODEL"]
# The ollama/ provider sends no key of its own: a team passes it as a header.
HEADERS = {"Authorization": f"Bearer {KEY}", "X-Project": PROJECT}


def ask(provider: str, content: str, **extra: Any) -> dict[str, Any]:
    reply = litellm.completion(
        model=f"{provider}/{MODEL}",
        messages=[{"role": "user", "content": f"{PROJECT} {content}"}],
        api_base=GATEWAY,
        extra_headers=HEADERS,
        max_tokens=8,
        **extra,
    )
    if extra.get("stream"):
        text = "".join(chunk.choices[0].delta.content or "" for chunk in reply)
        return {"text": text}
    usage = reply.usage
    return {
        "text": reply.choices[0].message.content,
        "usage": [usage.prompt_tokens, usage.completion_tokens],
    }


def embed() -> dict[str, Any]:
    reply = litellm.embedding(
        model=f"ollama/{MODEL}",
        input=[f"{PROJECT} one", f"{PROJECT} two"],
        api_base=GATEWAY,
        extra_headers=HEADERS,
    )
    return {"count": len(reply.data), "tokens": reply.usage.prompt_tokens}


def attempt(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return work()
    except Exception as exc:  # any failure of the client is the finding
        return {"error": type(exc).__name__, "message": str(exc)[:500]}


out = {
    "generate": attempt(lambda: ask("ollama", "Say hi.")),
    "generate streamed": attempt(lambda: ask("ollama", "Count to three.", stream=True)),
    "chat": attempt(lambda: ask("ollama_chat", "Say hi.")),
    "chat streamed": attempt(lambda: ask("ollama_chat", "Count to three.", stream=True)),
    "embed": attempt(embed),
}
print(json.dumps(out))
