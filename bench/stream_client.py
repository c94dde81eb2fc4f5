"""Load generator for streamed answers: many concurrent streams, one asyncio process.

Each stream is one raw HTTP/1.1 connection that POSTs a body and reads the answer, which
is either the gateway's SSE (`data: {"content":"i:ns "}`) or the upstream's NDJSON
(`"content":"i:ns "`); the same pattern finds the tokens in both. The upstream
(bench/upstream.py) writes `i:ns` with ns its monotonic clock when it sent the line, so
the client measures each token's trip through whatever sits in between.

It prints one JSON object: streams completed, tokens, order violations, and latencies.
With --calls M, the N streams are N clients that each ask again, on a new connection, as
soon as their stream ends, until M calls are done (with --burst B, in bursts of B calls
with a pause between two); it prints the counts, and the reason of each kind of failure (a
status line, an error event, a connection that closed early).

python bench/stream_client.py --port P --path /api/v1/ai/ask_async --body '{...}' --streams N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from collections import Counter
from typing import Any

import uvloop

_TOKEN = re.compile(rb'"content":"(\d+):(\d+) "')
_DONE = (b"event: done", b'"done":true', b"data: [DONE]")
_ERROR = b"event: error"


class Stream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.status_ok: bool | None = None
        self.next_index = 0
        self.tokens = 0
        self.last_ns = 0
        self.first_token_ns = 0
        self.first_sent_ns = 0
        self.sent_ns = 0
        self.done = False
        self.failed = False
        self.disorder = 0
        self.reason = ""  # why it failed
        self.finished = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sent_ns = time.monotonic_ns()
        self.transport.write(self.client.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self.buffer + data
        if self.status_ok is None:
            self.status_ok = buffer.startswith(b"HTTP/1.1 200")
            if not self.status_ok:
                self.failed = True
                status = buffer.split(b"\r\n", 1)[0]
                body = buffer.partition(b"\r\n\r\n")[2]
                self.reason = (status + b" " + body[:200]).decode(errors="replace")
                self._end()
                return
        cut = buffer.rfind(b"\n") + 1
        head, self.buffer = buffer[:cut], buffer[cut:]
        client = self.client
        for index, sent in _TOKEN.findall(head):
            i = int(index)
            if i != self.next_index:
                self.disorder += 1
            self.next_index = i + 1
            sent_ns = int(sent)
            latency = now - sent_ns
            client.latencies.append(latency)
            if i == 0:
                self.first_sent_ns = sent_ns
            if client.steady:
                client.steady_latencies.append(latency)
                if client.interval_ns:
                    # How late the upstream itself sent this line against its schedule.
                    due = self.first_sent_ns + i * client.interval_ns
                    client.lateness.append(max(0, sent_ns - due))
            if self.last_ns:
                client.gaps.append(now - self.last_ns)
            else:
                self.first_token_ns = now
                client.started_streaming()
            self.last_ns = now
            self.tokens += 1
        if _ERROR in head:
            self.failed = True
            event = head[head.index(_ERROR) :]
            self.reason = event.split(b"\n\n", 1)[0][:300].decode(errors="replace")
            self._end()
        elif _DONE[0] in head or _DONE[1] in head or _DONE[2] in head:
            self.done = True
            self._end()
        elif client.leave_after and self.tokens >= client.leave_after:
            client.ready(self)

    def _end(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            if not self.done:
                self.failed = not self.client.leaving
                self.reason = f"the connection closed before the end ({exc!r})"
            self.finished.set_result(None)


class Client:
    def __init__(self, args: Any) -> None:
        body = args.body.encode()
        self.request = (
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
            % (args.path.encode(), len(body), body)
        )
        self.leave_after: int = args.leave_after
        self.latencies: list[int] = []
        # Steady state: every stream has had its first token, so none is still being opened.
        self.steady = False
        self.streaming = 0
        self.steady_latencies: list[int] = []
        self.gaps: list[int] = []
        self.lateness: list[int] = []
        self.interval_ns = int(args.interval * 1e9)
        self.waiting: set[Stream] = set()
        self.all_ready = asyncio.get_running_loop().create_future()
        self.expected = args.streams
        self.leaving = False

    def started_streaming(self) -> None:
        self.streaming += 1
        if self.streaming == self.expected:
            self.steady = True

    def ready(self, stream: Stream) -> None:
        self.waiting.add(stream)
        if len(self.waiting) == self.expected and not self.all_ready.done():
            self.all_ready.set_result(None)


def _percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6  # ms


async def run(args: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    client = Client(args)
    streams: list[Stream] = []

    async def open_one() -> None:
        stream = Stream(client)
        streams.append(stream)
        try:
            await loop.create_connection(lambda: stream, args.host, args.port)
        except OSError:
            stream.failed = True
            stream.finished.set_result(None)

    started = time.monotonic()
    spacing = args.ramp / max(1, args.streams)
    openers = []
    for i in range(args.streams):
        openers.append(asyncio.ensure_future(open_one()))
        if spacing:
            await asyncio.sleep(max(0.0, started + (i + 1) * spacing - time.monotonic()))
    await asyncio.gather(*openers)
    left_at = None
    if args.leave_after:
        await asyncio.wait_for(client.all_ready, args.timeout)
        client.leaving = True
        left_at = time.time()
        for stream in streams:
            assert stream.transport is not None
            stream.transport.abort()
    await asyncio.wait_for(asyncio.gather(*(s.finished for s in streams)), args.timeout)
    ttfts = [s.first_token_ns - s.sent_ns for s in streams if s.first_token_ns]
    return {
        "streams": len(streams),
        "completed": sum(s.done for s in streams),
        "failed": sum(s.failed for s in streams),
        "tokens": sum(s.tokens for s in streams),
        "disorder": sum(s.disorder for s in streams),
        "latency_p50_ms": _percentile(client.latencies, 0.50),
        "latency_p99_ms": _percentile(client.latencies, 0.99),
        "latency_max_ms": _percentile(client.latencies, 1.0),
        "steady_tokens": len(client.steady_latencies),
        "steady_p50_ms": _percentile(client.steady_latencies, 0.50),
        "steady_p99_ms": _percentile(client.steady_latencies, 0.99),
        "gap_p99_ms": _percentile(client.gaps, 0.99),
        "upstream_late_p99_ms": _percentile(client.lateness, 0.99),
        "ttft_p50_ms": _percentile(ttfts, 0.50),
        "left_at": left_at,
        "seconds": time.monotonic() - started,
    }


async def calls(args: Any) -> dict[str, Any]:
    """args.streams clients, each asking again on a new connection when its stream ends,
    until args.calls calls are done: how many failed, and why. With args.burst, the calls
    come in bursts of that many, each followed by a pause of args.pause (low, high) seconds,
    drawn at random, in which nothing is asked."""
    loop = asyncio.get_running_loop()
    args.leave_after = 0
    client = Client(args)
    left = 0
    counts = {"completed": 0, "failed": 0, "tokens": 0, "disorder": 0}
    reasons: Counter[str] = Counter()

    async def ask(stream: Stream) -> None:
        await loop.create_connection(lambda: stream, args.host, args.port)
        await asyncio.wait_for(stream.finished, args.timeout)

    async def one_client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            stream = Stream(client)
            try:
                await ask(stream)
            except (OSError, TimeoutError) as exc:
                stream.failed = True
                stream.reason = f"{type(exc).__name__}: {exc}"
                if stream.transport is not None:
                    stream.transport.abort()
            counts["completed"] += stream.done
            counts["failed"] += stream.failed
            counts["tokens"] += stream.tokens
            counts["disorder"] += stream.disorder
            if stream.failed:
                reasons[stream.reason] += 1
            # Nothing here reads them: keep memory flat over 100,000 calls.
            for kept in (client.latencies, client.steady_latencies, client.gaps, client.lateness):
                kept.clear()

    started = time.monotonic()
    pauses: list[float] = []
    remaining = args.calls
    while remaining:
        left = min(remaining, args.burst or remaining)
        remaining -= left
        await asyncio.gather(*(one_client() for _ in range(args.streams)))
        if remaining and args.burst:
            pauses.append(random.uniform(*args.pause))
            await asyncio.sleep(pauses[-1])
    return {
        "calls": args.calls,
        "concurrency": args.streams,
        **counts,
        "failures": dict(reasons.most_common()),
        "pauses": len(pauses),
        "paused_seconds": sum(pauses),
        "seconds": time.monotonic() - started,
    }


async def ttft(args: Any) -> dict[str, Any]:
    """Sequential streams of one token: the time to the first token, one at a time."""
    times = []
    for _ in range(args.sequential):
        args.streams = 1
        args.ramp = 0.0
        result = await run(args)
        if result["completed"] != 1 or result["ttft_p50_ms"] is None:
            return {"error": "a stream did not complete", **result}
        times.append(int(result["ttft_p50_ms"] * 1e6))
    return {"requests": len(times), "ttft_p50_ms": _percentile(times, 0.5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to open them all over")
    parser.add_argument("--leave-after", type=int, default=0, help="hang up after K tokens")
    parser.add_argument("--sequential", type=int, default=0, help="measure TTFT one at a time")
    parser.add_argument(
        "--calls", type=int, default=0, help="this many calls, --streams at a time, then stop"
    )
    parser.add_argument("--burst", type=int, default=0, help="with --calls: calls per burst")
    parser.add_argument(
        "--pause",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(4.9, 5.1),
        help="with --burst: seconds between bursts, LOW,HIGH (drawn at random)",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="the upstream's seconds between lines: report how late it sent them (steady)",
    )
    args = parser.parse_args()
    if args.calls:
        result = uvloop.run(calls(args))
    else:
        result = uvloop.run(ttft(args) if args.sequential else run(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
