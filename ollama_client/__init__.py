"""An Ollama server as an upstream: the only code that knows Ollama's wire format."""

from __future__ import annotations

from .client import OllamaStream, OllamaUpstream
from .transport import KeepAliveTransport

__all__ = ["KeepAliveTransport", "OllamaStream", "OllamaUpstream"]
