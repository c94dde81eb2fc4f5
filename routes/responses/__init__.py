"""OpenAI's Responses API at POST /v1/responses, stateless (as Ollama's own).

The body is decoded into the API's shapes (`schemas`) and translated into a neutral chat call
(`translate`), asked of the upstream in its native form, so the record keeps its timings. The
answer is framed as a `response` object or its typed event stream (`framing`); errors are the
OpenAI front's shape with `param` set (`errors`); the handler is in `handlers`, the document in
`openapi`.
"""

from __future__ import annotations

from .errors import BROWSER_ORIGINS, PREFIX, error_response
from .handlers import FRONT, routes
from .openapi import openapi

__all__ = ["BROWSER_ORIGINS", "FRONT", "PREFIX", "error_response", "openapi", "routes"]
