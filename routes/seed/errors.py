"""The seed's API answers errors in the gateway's own shape (routes/errors.py): so does
everything under /api/v1/ (this API and the admin API), though Ollama's front claims the rest
of /api/."""

from __future__ import annotations

from ..errors import error_response

PREFIX = "/api/v1/"

__all__ = ["PREFIX", "error_response"]
