"""A response body as it arrives, with as few layers between the socket and the reader as
httpx allows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


def body_stream(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response body as it arrives, its Content-Encoding undone."""
    stream = response.stream
    if "content-encoding" in response.headers or not isinstance(stream, httpx.AsyncByteStream):
        return response.aiter_bytes()
    # Nothing to undo: the transport's bytes as they are, without httpx's decoder and
    # chunker generators in between (two generator hops per streamed token).
    return aiter(stream)
