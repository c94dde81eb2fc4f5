"""A response body as it arrives, with as few layers between the socket and the reader as
httpx allows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


def encoded(response: httpx.Response) -> bool:
    """Whether the body has a Content-Encoding to undo. Read off the raw headers: asking
    `response.headers` normalizes every header, a few microseconds a response."""
    return any(name.lower() == b"content-encoding" for name, _ in response.headers.raw)


def body_stream(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response body as it arrives, its Content-Encoding undone."""
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream) or encoded(response):
        return response.aiter_bytes()
    # Nothing to undo: the transport's bytes as they are, without httpx's decoder and
    # chunker generators in between (two generator hops per streamed token).
    return aiter(stream)
