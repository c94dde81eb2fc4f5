"""Everything the gateway knows about Ollama's wire format and failures."""

from __future__ import annotations

from .client import Answer, ChatStream, Metrics, OllamaClient, Piece
from .errors import (
    ModelNotFound,
    OllamaBadResponse,
    OllamaBusy,
    OllamaError,
    OllamaFailed,
    OllamaRejected,
    OllamaTimeout,
    OllamaUnavailable,
)
from .transport import KeepAliveTransport
from .wire import Message

__all__ = [
    "Answer",
    "ChatStream",
    "KeepAliveTransport",
    "Message",
    "Metrics",
    "ModelNotFound",
    "OllamaBadResponse",
    "OllamaBusy",
    "OllamaClient",
    "OllamaError",
    "OllamaFailed",
    "OllamaRejected",
    "OllamaTimeout",
    "OllamaUnavailable",
    "Piece",
]
