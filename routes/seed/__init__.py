"""The seed's API at /api/v1/ai, as the original README describes it: the seed's
`agent`/`content`/`template` body (`schemas`), translated into a neutral call (`translate`),
its events framed as the seed's Server-Sent Events (`framing`), the handlers and their routes
(`handlers`), the gateway's own error shape (`errors`), and its part of the OpenAPI document
(`openapi`). The pipeline knows none of this."""

from __future__ import annotations

from .errors import PREFIX, error_response
from .handlers import FRONT, routes
from .openapi import openapi

__all__ = ["FRONT", "PREFIX", "error_response", "openapi", "routes"]
