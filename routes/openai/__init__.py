"""The OpenAI API at /v1/*: chat completions, completions, embeddings and models.

Each body is decoded into OpenAI's shapes (`schemas`) and translated into a neutral call
(`translate`), which reaches the upstream in its native form, so the record keeps its
timings: load, prompt evaluation, generation. Answers are framed as OpenAI's objects and
chunks (`framing`), errors in OpenAI's shape (`errors`); the handlers and routes are in
`handlers`, the document in `openapi`.
"""

from __future__ import annotations

from .errors import BROWSER_ORIGINS, PREFIX, error_response
from .handlers import FRONT, routes
from .openapi import openapi

__all__ = ["BROWSER_ORIGINS", "FRONT", "PREFIX", "error_response", "openapi", "routes"]
