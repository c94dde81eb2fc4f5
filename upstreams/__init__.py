"""Several model servers behind one address: their configuration (`config`), the kinds of
server (`kinds`), and the `Router` that is itself one `calls.upstream.Upstream`."""

from __future__ import annotations

from .build import build, describe
from .router import Router

__all__ = ["Router", "build", "describe"]
