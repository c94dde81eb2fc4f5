"""Newline-delimited lines out of a byte stream, within a bound, in linear time.

A line that arrives in many reads is kept as a list of its parts and joined once, when its
newline comes: appending each read to one buffer (`buffer += data`) copies the line again on
every read, which made one 200 MB line take 15 s of CPU. A line longer than the bound ends the
stream with `LineTooLong` before more of it is held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator


class LineTooLong(Exception):
    """A line passed the bound before its newline came."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line longer than {limit} bytes")
        self.limit = limit


async def split_lines(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[list[bytes]]:
    """The complete lines (without their newline) each read brings, as a list per read that
    completed any; then what is left after the last newline, if anything."""
    parts: list[bytes] = []
    held = 0
    async for data in chunks:
        if not parts and data[-1:] == b"\n" and data.find(b"\n") == len(data) - 1:
            # The common case when streaming: one read, one whole line (a token).
            if len(data) - 1 > limit:
                raise LineTooLong(limit)
            yield [data[:-1]]
            continue
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if parts:
                parts.append(data[start:end])
                line = b"".join(parts)
                parts, held = [], 0
            else:
                line = data[start:end]
            if len(line) > limit:
                raise LineTooLong(limit)
            lines.append(line)
            start = end + 1
        if start < len(data):
            held += len(data) - start
            if held > limit:
                raise LineTooLong(limit)
            parts.append(data[start:] if start else data)
        if lines:
            yield lines
    if parts:
        yield [b"".join(parts)]
