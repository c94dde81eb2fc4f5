"""`Server-Timing` on every response: where the call's time went so far, in milliseconds.

    Server-Timing: gateway;dur=0.412, queue;dur=0.000, upstream;dur=153.921

`gateway` is the gateway's own part (from the request's first byte to the response's start,
less the queue and the upstream), `queue` the wait for a free upstream slot (--upstream-queue),
`upstream` the wait on the model server. A whole answer's header has the whole call; a stream's
has what is known when its headers go out (the upstream has accepted), and its usage record the
rest. A request that makes no call has `gateway` alone. Browsers show these in the network
panel's Timing tab; `curl -v` shows the header. This is the one place the header is made.
"""

from __future__ import annotations

from routes.request_id import RequestInfo

SERVER_TIMING = b"server-timing"


def timing_value(gateway: float, queue: float | None, upstream: float | None) -> bytes:
    """The header's value for these durations in seconds (None: no such part)."""
    # One bytes %-format per case: the header is made for every response, and formatting
    # each part apart cost twice as much.
    if upstream is None:
        return b"gateway;dur=%.3f" % (gateway * 1000)
    if queue is None:
        return b"gateway;dur=%.3f, upstream;dur=%.3f" % (gateway * 1000, upstream * 1000)
    return b"gateway;dur=%.3f, queue;dur=%.3f, upstream;dur=%.3f" % (
        gateway * 1000,
        queue * 1000,
        upstream * 1000,
    )


def server_timing(info: RequestInfo, now: float) -> bytes:
    """The header's value for this request at `now` (time.perf_counter)."""
    account = info.account
    if account is None:
        return timing_value(now - info.started, None, None)
    gateway, queue, upstream = account.split(now)
    return timing_value(gateway, queue, upstream)
