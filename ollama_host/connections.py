"""Bounds on client connections: how long a request may take to arrive, how long a
connection may sit idle, and how many may be open at once.

uvicorn bounds none of these. It has no timeout for a request's headers or body, it closes
an idle connection only after answering a request on it (`timeout_keep_alive`), and its
`limit_concurrency` answers 503 only after reading a whole request. 200 clients sending a
body at a byte a second, 200 sending headers that way and 2,000 silent connections held
2,416 open files for as long as they liked (bench/slow_clients.py). So the gateway runs
uvicorn's own protocol classes, subclassed here (httptools when installed, as uvicorn
picks; h11 otherwise), passed as `uvicorn.Config(http=...)`:

- `header_timeout`: from a request's first byte to the end of its headers;
- `body_timeout`: from the end of the headers to the end of the body, the whole body;
- `idle_timeout`: a connection waiting for a request, before its first one or between two;
- `max_connections`: at it, the oldest connection waiting for a request is closed to make
  room for a new one (its client loses nothing but a connection to reopen); if none is
  waiting, the new connection is answered 503 and closed as soon as it is accepted, before
  anything is read from it;
- `max_headers`: the request line and headers together, in bytes. Neither parser bounds a
  head (h11 stops at 16 KB, httptools never), and uvicorn keeps every header line it is
  handed until the head ends: 20 connections sending 20 MB of headers each took the
  gateway from 44 MB to 510 MB, and it stayed at 492 MB. So the parser is never handed
  more of a head than this; past it the request is answered 431.

A request that misses its deadline is answered 408 in the gateway's error shape, and the
connection closes. The deadlines cover receiving a request and idling between requests,
never an answer being written: while one is going out on the connection (a stream of
minutes, or a model slow to start), an expired deadline is looked at again later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import h11
import msgspec
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from uvicorn.protocols.http.flow_control import FlowControl

    from .settings import Settings

log = logging.getLogger("ollama_host.connections")

# Files the process needs besides its client connections: the listening socket, the usage
# files, the log. And a client that asks holds an upstream connection too, so a client
# connection costs up to two descriptors.
_SPARE_FILES = 64
_CAP = 1024
# Seconds a connection answered 408 is still read (and what comes dropped) before it closes.
_LINGER = 2.0


def default_max_connections() -> int:
    """min(1024, (the soft open-files limit - 64) / 2): well under the limit, whatever it is."""
    if sys.platform == "win32":
        return _CAP
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _CAP
    return max(1, min(_CAP, (soft - _SPARE_FILES) // 2))


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_connections: int
    max_headers: int = 32 * 1024  # --max-headers' default: nginx's 4 buffers of 8 KB

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            idle_timeout=settings.idle_timeout,
            max_connections=settings.max_connections or default_max_connections(),
            max_headers=settings.max_headers,
        )


class _Tally:
    """Counts an event that can come by the thousand; logs it at once, then once a minute."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.since_line = 0
        self.line_at = -math.inf

    def count(self) -> None:
        self.since_line += 1
        now = time.monotonic()
        if now - self.line_at >= 60:
            log.warning(self.message, self.since_line)
            self.line_at = now
            self.since_line = 0


def _response(status: int, reason: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP response in the gateway's error shape, closing the connection."""
    # The shape of routes/schemas.ErrorBody, spelled out: this layer sits under the routes.
    error = {"status": status, "code": code, "message": message, "request_id": None}
    body = msgspec.json.encode({"error": error})
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        len(body),
    )
    return head + extra + b"connection: close\r\n\r\n" + body


if TYPE_CHECKING:

    class _Uvicorn(asyncio.Protocol):
        """What the mixin uses of uvicorn's HTTP protocol classes."""

        transport: asyncio.Transport
        loop: asyncio.AbstractEventLoop
        flow: FlowControl
        cycle: Any
        connections: set[Any]
        timeout_keep_alive: int
        timeout_keep_alive_task: asyncio.TimerHandle | None

        def connection_made(self, transport: asyncio.Transport) -> None: ...  # type: ignore[override]
        def on_response_complete(self) -> None: ...
        def timeout_keep_alive_handler(self) -> None: ...

else:
    _Uvicorn = asyncio.Protocol


class _Bounded(_Uvicorn):
    """The bounds, over either of uvicorn's protocol classes (see protocol_class)."""

    limits: ClassVar[ConnectionLimits]
    refused: ClassVar[_Tally]
    evicted: ClassVar[_Tally]
    timed_out: ClassVar[_Tally]
    too_large: ClassVar[_Tally]
    answers: ClassVar[dict[str, bytes]]  # "full", "headers", "body", "too_large"
    # The server's connections waiting for a request, oldest first (a dict as an ordered
    # set); and those closed to make room, counted until their close completes.
    waiting: ClassVar[dict[_Bounded, None]]
    leaving: ClassVar[set[_Bounded]]

    _refused = False
    _lingering = False  # answered 408; reading only to drop what still comes
    _handed_over = False  # to a WebSocket protocol, which has its own rules
    _deadline: asyncio.TimerHandle | None = None
    _phase = ""  # "headers" or "body" while a request arrives
    # Set only when a head is still incomplete after a read: an attribute written on every
    # request would take the instance past the 30 attributes a CPython 3.11 instance keeps in
    # its class's shared-key table, and every attribute lookup on the protocol (hundreds a
    # request) would get slower: 18,000 instructions a request, measured.
    _head_bytes = 0  # of the head arriving, handed to the parser so far
    _oversized = False  # a head too large, behind an answer still going out

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) - len(self.leaving) >= self.limits.max_connections:
            if self.waiting:
                # A connection waiting for a request costs its client nothing to reopen:
                # the oldest makes room, so that a flood of silent connections cannot
                # lock everyone else out for the idle timeout.
                next(iter(self.waiting))._make_room()
            else:
                # Before uvicorn makes its parser and counts the connection: a refusal
                # costs a write and a close, and the client learns why if it reads first.
                self._refused = True
                transport.write(self.answers["full"])
                transport.close()
                self.refused.count()
                return
        super().connection_made(transport)
        # Typed int after uvicorn's Config option; it only ever goes to loop.call_later.
        self.timeout_keep_alive = self.limits.idle_timeout  # type: ignore[assignment]
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.idle_timeout, self.timeout_keep_alive_handler
        )
        self.waiting[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.waiting.pop(self, None)
        self.leaving.discard(self)
        self._leave()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._oversized:
            self._refuse(self.answers["too_large"])
        elif self.timeout_keep_alive_task is not None:  # uvicorn now waits for a request
            self.waiting[self] = None

    def _request_begins(self) -> None:
        """Bytes came in: the connection is no longer waiting (see data_received)."""
        self.waiting.pop(self, None)

    def _make_room(self) -> None:
        del self.waiting[self]
        self.leaving.add(self)
        self.evicted.count()
        self.timeout_keep_alive_handler()  # how uvicorn closes an idle connection

    def _hand_over(self) -> None:
        self._handed_over = True
        self._leave()

    # A request's deadline is armed only once the bytes at hand are parsed (_arm), and only
    # if they left it incomplete: most requests come whole, and then cost no timer at all.

    def _enter(self, phase: str) -> None:
        if phase != self._phase:
            self._leave()
            self._phase = phase

    def _leave(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = ""

    # The head's bound. The protocol class says how to parse and where a request stands.

    @abstractmethod
    def _parse(self, data: bytes) -> None: ...

    @abstractmethod
    def _in_head(self) -> bool:
        """Whether the parser is inside a request's head (or waiting for one to start)."""

    def _feed(self, data: bytes) -> None:
        """Parse `data`, but never more of a request's head than max_headers: what is handed
        to the parser stays in memory until the head ends, so the rest is only looked at
        once the head has ended within the bound. A head that does not is answered 431."""
        limit = self.limits.max_headers
        while data:
            if not self._in_head():
                self._parse(data)  # a body: bounded elsewhere (--max-body)
                return
            room = limit - self._head_bytes
            piece = data if len(data) <= room else data[:room]
            cycle = self.cycle  # a new one once a head is complete
            self._parse(piece)
            if self.transport.is_closing():
                return
            if not self._in_head() or self.cycle is not cycle:
                # The head ended. (One that began after another ended in the same bytes is
                # counted from the next read on: at most a read past the bound.)
                if self._head_bytes:
                    self._head_bytes = 0
            else:
                self._head_bytes += len(piece)
                if len(piece) < len(data):
                    self._head_too_large()
                    return
            data = data[len(piece) :]

    def _head_too_large(self) -> None:
        self.too_large.count()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Behind an answer still going out (a stream): never cut it. Read nothing more,
            # and refuse this request once that answer is complete.
            self._oversized = True
            self.flow.pause_reading()
            return
        self._refuse(self.answers["too_large"])

    def _refuse(self, answer: bytes) -> None:
        """Answer `answer` (which closes the connection), drop whatever else comes."""
        self._leave()
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing with the client's bytes unread would reset the connection, and a reset
        # can destroy the answer before the client reads it: half-close instead, drop what
        # still comes, and close when the client does or after _LINGER seconds.
        self._lingering = True
        self.transport.write_eof()
        self._deadline = self.loop.call_later(_LINGER, self.transport.close)

    def _arm(self) -> None:
        if self._phase and self._deadline is None and not self._handed_over:
            limits = self.limits
            seconds = limits.header_timeout if self._phase == "headers" else limits.body_timeout
            self._deadline = self.loop.call_later(seconds, self._expired)

    def _earlier_request_running(self) -> bool:
        """Whether an earlier request on this connection is still being answered."""
        return False

    def _expired(self) -> None:
        phase, self._deadline = self._phase, None
        cycle = self.cycle
        if self.transport.is_closing() or (phase == "body" and cycle is None):
            return  # closed already, or its head asked for an upgrade
        if phase == "headers":
            # The cycle, if any, is the previous request's: still being answered (a stream,
            # a model loading) while the next request's head trickles in.
            answering = cycle is not None and not cycle.response_complete
        else:
            answering = self._earlier_request_running() or (
                cycle.response_started and not cycle.response_complete
            )
        if answering or self.flow.read_paused:
            # An answer is going out, or the gateway itself stopped reading (a full body
            # buffer, a pipelined request): not the client's delay. Never cut an answer.
            self._arm()
            return
        if phase == "body" and cycle.response_complete:
            # Answered without its body (a refusal): nothing more can be sent.
            self.transport.close()
            return
        if phase == "body":
            # The app waits for the body: it gets a disconnect, and may write nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
        self.timed_out.count()
        self._refuse(self.answers[phase])


class BoundedH11(_Bounded, H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # h11's own bound on a head (16 KB by default) would answer 400 before ours.
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_headers)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._hand_over()
        super().handle_websocket_upgrade(event)

    def _parse(self, data: bytes) -> None:
        super().data_received(data)

    def _in_head(self) -> bool:
        # Not while their side is DONE: h11 then keeps a pipelined request's bytes unparsed
        # until the answer is out, and bounds them itself (max_incomplete_event_size, which
        # uvicorn answers 400), after at most a read, as uvicorn stops reading meanwhile.
        return self.conn.their_state is h11.IDLE and not self._handed_over

    def data_received(self, data: bytes) -> None:
        self._request_begins()
        if self._lingering or self._oversized:
            return
        self._feed(data)
        if self._lingering or self._oversized or self.transport.is_closing():
            return
        # h11 tells where the request stands only by its state: IDLE once bytes came in
        # means a head still incomplete.
        state = self.conn.their_state
        if state is h11.IDLE:
            self._enter("headers")
        elif state is h11.SEND_BODY:
            self._enter("body")
        else:
            self._leave()
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request, parsed only now, whose body is still to come. (IDLE is left
        # to the idle timer, which uvicorn just armed.)
        if self.conn.their_state is h11.SEND_BODY:
            self._enter("body")
            self._arm()


def _httptools_class() -> type[_Bounded]:
    # Imported here: httptools is optional (the `speed` extra).
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpTools(_Bounded, HttpToolsProtocol):
        def _parse(self, data: bytes) -> None:
            super().data_received(data)

        def _in_head(self) -> bool:
            return self._phase != "body" and not self._handed_over

        def data_received(self, data: bytes) -> None:
            self._request_begins()
            if self._lingering or self._oversized:
                return
            self._feed(data)
            if not (self._lingering or self._oversized):
                self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._enter("headers")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._enter("body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._leave()

        def handle_websocket_upgrade(self) -> None:
            self._hand_over()
            super().handle_websocket_upgrade()

        def _earlier_request_running(self) -> bool:
            # A request whose head came in while another was answered waits in the pipeline.
            return bool(self.pipeline)

    return BoundedHttpTools


def protocol_class(limits: ConnectionLimits, *, http: str = "auto") -> type[asyncio.Protocol]:
    """The protocol class for uvicorn.Config(http=...), holding these limits.

    http: "auto" (httptools if installed, as uvicorn picks), "httptools" or "h11".
    """
    base: type[_Bounded]
    if http == "h11":
        base = BoundedH11
    else:
        try:
            base = _httptools_class()
        except ImportError:
            if http == "httptools":
                raise
            base = BoundedH11
    full = _response(
        503,
        b"Service Unavailable",
        "too_many_connections",
        f"the gateway has as many connections open as it allows ({limits.max_connections}, "
        "--max-connections); try again shortly",
        b"retry-after: 1\r\n",
    )
    headers = _response(
        408,
        b"Request Timeout",
        "request_timeout",
        f"the request's headers did not arrive within {limits.header_timeout:g} s "
        "(--header-timeout)",
    )
    body = _response(
        408,
        b"Request Timeout",
        "request_timeout",
        f"the request's body did not arrive within {limits.body_timeout:g} s of its headers "
        "(--body-timeout)",
    )
    too_large = _response(
        431,
        b"Request Header Fields Too Large",
        "headers_too_large",
        f"the request line and headers are larger than {limits.max_headers} bytes (--max-headers)",
    )
    attributes = {
        "limits": limits,
        "answers": {"full": full, "headers": headers, "body": body, "too_large": too_large},
        "waiting": {},
        "leaving": set(),
        "refused": _Tally(
            f"refusing new connections: {limits.max_connections} are open and busy, as many "
            "as --max-connections allows (%d refused since the previous such line; "
            "one a minute at most)"
        ),
        "evicted": _Tally(
            f"{limits.max_connections} connections open, as many as --max-connections allows: "
            "closing those waiting for a request to make room (%d since the previous such "
            "line; one a minute at most)"
        ),
        "timed_out": _Tally(
            "closed connections whose request did not arrive in time (--header-timeout "
            f"{limits.header_timeout:g} s, --body-timeout {limits.body_timeout:g} s): "
            "%d since the previous such line (one a minute at most)"
        ),
        "too_large": _Tally(
            "refused requests whose line and headers passed --max-headers "
            f"({limits.max_headers} bytes) with 431: %d since the previous such line (one a "
            "minute at most)"
        ),
    }
    return type(base.__name__, (base,), attributes)
