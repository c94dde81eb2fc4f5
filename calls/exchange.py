"""One HTTP exchange with a model server, as every upstream kind makes it: a request the
transport sends as it is, a whole body read within a bound, and every way either fails (or a
stream breaks mid-answer) as the gateway's own `UpstreamError`, in one mapping. Each kind
keeps only what is its own: its paths, its wire format, and what its error bodies say.
"""

from __future__ import annotations

from contextvars import ContextVar

import httpx

from http_transport import FirstByteTimeout, LineTooLong, MalformedResponse, exchange

from .errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)

# The W3C `traceparent` the current call passes on to its upstream (--otlp sets it per call;
# a stream's opening task inherits it). Only calls carry it: they are POSTs, and the health
# checks, which may run in a task a call started, are GETs.
traceparent: ContextVar[bytes | None] = ContextVar("traceparent", default=None)


class Server:
    """One model server over a transport: how to ask it, and what its failures mean."""

    __slots__ = (
        "_headers",
        "_timeout",
        "address",
        "first_byte",
        "hint",
        "max_body",
        "transport",
        "who",
    )

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        address: str,
        timeout: httpx.Timeout | None,
        *,
        who: str,
        max_body: int,
        api_key: str | None = None,
        hint: str = "",
        first_byte: float | None = None,
    ) -> None:
        self.transport = transport
        self.address = address
        # How messages name the server ("Ollama at http://..."), and what to do when it
        # cannot be reached, beyond "is it running?".
        self.who = who
        self.hint = hint
        self.max_body = max_body
        self._timeout = (timeout or httpx.Timeout(300.0)).as_dict()
        # How long a call waits for the first byte of an answer (a head, then a body's first
        # bytes) before it is failed, so the router can try it elsewhere: a hung server
        # otherwise holds it for the whole read timeout. Never longer than that timeout.
        read = self._timeout.get("read")
        if first_byte is not None and (read is None or first_byte < read):
            self._timeout["first_byte"] = first_byte
        self.first_byte = self._timeout.get("first_byte")
        # The key is sent to this server only, held nowhere else: never logged, never in an
        # error.
        self._headers = exchange.json_headers(api_key)

    def request(self, method: str, url: httpx.URL, body: bytes | None = None) -> httpx.Request:
        headers = self._headers
        if method == "POST" and (trace := traceparent.get()) is not None:
            headers = [*headers, (b"traceparent", trace)]
        return exchange.request(method, url, headers, body, self._timeout)

    def failure(self, exc: Exception) -> UpstreamError | None:
        """The UpstreamError a failure to send or read stands for; None for one that is not a
        failure of talking to the server (a bug here, which must surface as it is)."""
        who = self.who
        if isinstance(exc, MalformedResponse):
            return UpstreamBadResponse(f"{who} answered malformed HTTP: {exc}")
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return UpstreamUnreachable(
                f"cannot reach {who} ({exc or type(exc).__name__}); is it running?{self.hint}"
            )
        if isinstance(exc, FirstByteTimeout):
            return self._no_first_byte()
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"{who} did not answer in time")
        if isinstance(exc, httpx.TransportError):
            return UpstreamUnavailable(f"the connection to {who} failed: {exc}")
        if isinstance(exc, httpx.DecodingError):
            # A body its Content-Encoding does not describe (say, gzip that is not gzip).
            return UpstreamBadResponse(f"the answer of {who} could not be decoded: {exc}")
        return None

    def broken(self, exc: Exception) -> UpstreamError | None:
        """What a stream's failure mid-answer stands for (None: not one of those)."""
        who = self.who
        if isinstance(exc, LineTooLong):
            return UpstreamBadResponse(
                f"{who} sent a line longer than {exc.limit} bytes (--max-upstream-line); the "
                "answer was cut off there"
            )
        if isinstance(exc, MalformedResponse):
            return UpstreamBadResponse(f"{who} answered malformed HTTP mid-answer: {exc}")
        if isinstance(exc, FirstByteTimeout):
            return self._no_first_byte()
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"{who} sent nothing for too long mid-answer")
        if isinstance(exc, httpx.TransportError):
            return UpstreamUnavailable(f"the connection to {who} broke mid-answer: {exc}")
        if isinstance(exc, httpx.DecodingError):
            return UpstreamBadResponse(f"the answer of {who} could not be decoded: {exc}")
        return None

    def _no_first_byte(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"{self.who} sent no first byte within {self.first_byte:g} s (its first_byte "
            "option, or --first-byte-timeout)"
        )

    async def send(self, request: httpx.Request) -> httpx.Response:
        """The response, its body still unread (close it, or read it to the end)."""
        # try/except, not a context manager: this runs on every ask.
        try:
            return await self.transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            if (failure := self.failure(exc)) is None:
                raise
            raise failure from exc

    async def read(self, response: httpx.Response) -> bytes:
        """The whole body, at most max_body bytes; the response is closed afterwards."""
        try:
            return await exchange.read_body(response, self.max_body)
        except exchange.BodyTooLarge:
            raise UpstreamBadResponse(
                f"{self.who} sent an answer larger than {self.max_body} bytes (--max-upstream-body)"
            ) from None
        except httpx.HTTPError as exc:
            if (failure := self.failure(exc)) is None:
                raise
            raise failure from exc

    async def aclose(self) -> None:
        await self.transport.aclose()
