"""The errors `ollama_client` raises. Nothing else leaves this package.

httpx exceptions are caught where they are born (client.py) and re-raised as one
of these, so callers speak of Ollama, not of sockets.
"""

from __future__ import annotations


class OllamaError(Exception):
    """Base class: every failure talking to Ollama."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OllamaUnavailable(OllamaError):
    """Ollama could not be reached, or dropped the connection."""


class OllamaTimeout(OllamaError):
    """Ollama accepted the connection but did not answer in time."""


class ModelNotFound(OllamaError):
    """Ollama answered 404: it does not have this model."""


class OllamaBusy(OllamaError):
    """Ollama answered 503: its queue is full."""


class OllamaRejected(OllamaError):
    """Ollama answered 400: it found the request itself wrong."""


class OllamaFailed(OllamaError):
    """Ollama reported a failure of its own: a 5xx, or an error line mid-stream."""


class OllamaBadResponse(OllamaError):
    """Ollama answered with something that is not its documented wire format."""
