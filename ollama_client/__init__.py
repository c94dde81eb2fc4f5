"""An Ollama server as an upstream: the only code that knows Ollama's wire format."""

from __future__ import annotations

from .client import OllamaStream, OllamaUpstream

__all__ = ["OllamaStream", "OllamaUpstream"]
