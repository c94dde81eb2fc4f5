"""Anthropic's Messages API at /v1/messages: a message, whole or streamed, and a token count.

Each body is decoded into Anthropic's shapes (`schemas`) and translated into a neutral call
(`translate`), which reaches the upstream in its native form, so the record keeps its
timings. Answers are framed as Anthropic's message and its events (`framing`), errors in
Anthropic's shape (`errors`); the handlers and routes are in `handlers`, the document in
`openapi`.
"""

from __future__ import annotations

from .errors import BROWSER_ORIGINS, PREFIX, error_response
from .handlers import FRONT, routes
from .openapi import openapi

__all__ = ["BROWSER_ORIGINS", "FRONT", "PREFIX", "error_response", "openapi", "routes"]
