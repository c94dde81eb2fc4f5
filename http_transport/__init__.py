"""HTTP/1.1 to model servers, shared by every upstream kind: a lean keep-alive transport for
httpx, one exchange (a complete request, a bounded body: `exchange`), and bounded line
splitting for streamed answers (NDJSON, SSE)."""

from __future__ import annotations

from .bodies import body_stream
from .lines import Lines, LineTooLong, split_lines
from .transport import FirstByteTimeout, KeepAliveTransport, MalformedResponse

__all__ = [
    "FirstByteTimeout",
    "KeepAliveTransport",
    "LineTooLong",
    "Lines",
    "MalformedResponse",
    "body_stream",
    "split_lines",
]
