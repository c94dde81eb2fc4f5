"""An OpenAI-compatible server as an upstream (llama.cpp's llama-server, vLLM, LM Studio,
Ollama's /v1): the only code that knows that wire format."""

from __future__ import annotations

from .client import OpenAIStream, OpenAIUpstream

__all__ = ["OpenAIStream", "OpenAIUpstream"]
