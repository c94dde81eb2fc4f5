"""CPU per byte of splitting an upstream's stream into lines, by line length: linear or not.

    .venv/bin/python -m bench.lines_bench

A line of L bytes arrives in 64 KB reads (as a socket delivers it). `split_lines` (the
gateway's) keeps the parts and joins them once; `appending` is what ChatStream.batches did
before it was bounded (`buffer += data` per read), which copies the line again on every read.
Figures are ns per byte, best of 3; a flat column is linear.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from http_transport.lines import split_lines

READ = 64 * 1024


async def _reads(line: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(line), READ):
        yield line[at : at + READ]


async def _split(line: bytes) -> int:
    got = 0
    async for batch in split_lines(_reads(line), len(line) + 1):
        got += sum(map(len, batch))
    return got


async def _appending(line: bytes) -> int:
    buffer = b""
    got = 0
    async for data in _reads(line):
        buffer += data
        if b"\n" not in buffer:
            continue
        *lines, buffer = buffer.split(b"\n")
        got += sum(map(len, lines))
    return got + len(buffer)


def _ns_per_byte(how: str, size: int) -> float:
    line = b"x" * (size - 1) + b"\n"
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        asyncio.run(_split(line) if how == "split_lines" else _appending(line))
        best = min(best, time.perf_counter() - start)
    return best / size * 1e9


def main() -> None:
    print(f"{'line':>10} {'split_lines':>14} {'appending':>14}   (ns per byte)")
    for size in (1 << 10, 1 << 16, 1 << 20, 8 << 20, 32 << 20, 128 << 20):
        new = _ns_per_byte("split_lines", size)
        old = _ns_per_byte("appending", size) if size <= 32 << 20 else float("nan")
        print(f"{size:>10,} {new:>14.3f} {old:>14.3f}")


if __name__ == "__main__":
    main()
