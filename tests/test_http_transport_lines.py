"""http_transport/lines.py: lines out of reads of any size, within a bound.

That each byte is copied at most twice (`buffer += data` copied a long line
again on every read) is measured by bench/lines_bench.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from http_transport.lines import LineTooLong, split_lines

pytestmark = pytest.mark.anyio


async def _reads(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


async def _all(chunks: list[bytes], limit: int = 1 << 20) -> list[bytes]:
    return [line async for batch in split_lines(_reads(chunks), limit) for line in batch]


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    st.booleans(),
)
def test_any_split_of_the_stream_gives_the_same_lines(
    lines: list[bytes], cuts: list[int], final_newline: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    got = asyncio.run(_all(_split(data, cuts)))
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert got == expected


async def test_a_line_past_the_bound_stops_before_more_of_it_is_held() -> None:
    piece = b"x" * 1000
    reads = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal reads
        while True:
            reads += 1
            yield piece

    with pytest.raises(LineTooLong):
        async for _ in split_lines(endless(), 10_000):
            pass

    assert reads == 11  # the first read past 10,000 bytes, not one more


async def test_a_whole_line_in_one_read_over_the_bound_is_refused_too() -> None:
    with pytest.raises(LineTooLong):
        await _all([b"y" * 2000 + b"\n"], limit=1000)
