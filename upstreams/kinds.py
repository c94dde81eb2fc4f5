"""The kinds of upstream the gateway can ask, by the name `kind=` gives them: one line each.

A kind is a class implementing `calls.upstream.Upstream` with a name and an address, made
with the same arguments as every other kind (`Kind` below), so the router builds any of them
the same way.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from calls.upstream import ModelServer
from ollama_client import OllamaUpstream
from openai_client import OpenAIUpstream


class Kind(Protocol):
    def __call__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        timeout: httpx.Timeout | None = None,
        *,
        name: str,
        max_line: int,
        max_body: int,
        api_key: str | None,
        first_byte: float | None = None,
    ) -> ModelServer: ...


KINDS: dict[str, Kind] = {
    "ollama": OllamaUpstream,
    "openai": OpenAIUpstream,
}
