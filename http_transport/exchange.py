"""One exchange with a model server, as every upstream kind makes it: a complete request for
the transport, and a whole body read within a bound. Each kind says in its own words what
went wrong; this module only tells what happened."""

from __future__ import annotations

import httpx

from .bodies import body_stream

Headers = list[tuple[bytes, bytes]]

_ACCEPT: Headers = [(b"Accept", b"application/json"), (b"User-Agent", b"ollama-host")]
_JSON = (b"Content-Type", b"application/json")


def json_headers(api_key: str | None = None) -> Headers:
    """The headers every request to one server carries: JSON wanted, and its API key, if it
    takes one (sent to that server only; never logged, never in an error)."""
    headers = list(_ACCEPT)
    if api_key:
        headers.append((b"Authorization", b"Bearer " + api_key.encode("latin-1")))
    return headers


def request(
    method: str,
    url: httpx.URL,
    headers: Headers,
    body: bytes | None,
    timeout: dict[str, float | None],
) -> httpx.Request:
    """A request the transport can send as it is, `body` (if any) being JSON. `stream=`
    rather than `content=`: the headers are complete as given, so httpx skips its header
    merging (a tenth of an ask's CPU, measured); the timeouts go in the extensions, where
    `httpx.AsyncClient` would put them."""
    head = [(b"Host", url.netloc), *headers]
    if body is not None:
        head += [(b"Content-Length", b"%d" % len(body)), _JSON]
    return httpx.Request(
        method,
        url,
        headers=head,
        stream=httpx.ByteStream(body or b""),
        extensions={"timeout": timeout},
    )


class BodyTooLarge(Exception):
    """A body went past its bound; what was read of it is dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The whole body, at most `limit` bytes (BodyTooLarge past it); the response is closed
    afterwards. The transport's errors go through as they are."""
    parts: list[bytes] = []
    size = 0
    try:
        async for part in body_stream(response):
            size += len(part)
            if size > limit:
                raise BodyTooLarge(limit)
            parts.append(part)
    finally:
        await response.aclose()
    return parts[0] if len(parts) == 1 else b"".join(parts)
