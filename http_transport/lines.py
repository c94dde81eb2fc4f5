"""Newline-delimited lines out of a byte stream, within a bound, in linear time.

A line that arrives in many reads is kept as a list of its parts and joined once, when its
newline comes: appending each read to one buffer (`buffer += data`) copies the line again on
every read, which made one 200 MB line take 15 s of CPU. A line longer than the bound ends the
stream with `LineTooLong` before more of it is held.

`Lines` is a plain object fed one read at a time, not an async generator: a streamed answer is
a read per token, and a generator hop per token showed in the cost of a relayed token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator


class LineTooLong(Exception):
    """A line passed the bound before its newline came."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line longer than {limit} bytes")
        self.limit = limit


class Lines:
    """Cuts reads into lines (without their newline)."""

    __slots__ = ("_held", "_parts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._held = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes (possibly none); raises LineTooLong past the bound."""
        if not self._parts and data[-1:] == b"\n" and data.find(b"\n") == len(data) - 1:
            # The common case when streaming: one read, one whole line (a token).
            if len(data) - 1 > self.limit:
                raise LineTooLong(self.limit)
            return [data[:-1]]
        lines: list[bytes] = []
        start = 0
        parts = self._parts
        while (end := data.find(b"\n", start)) >= 0:
            if parts:
                parts.append(data[start:end])
                line = b"".join(parts)
                parts.clear()
                self._held = 0
            else:
                line = data[start:end]
            if len(line) > self.limit:
                raise LineTooLong(self.limit)
            lines.append(line)
            start = end + 1
        if start < len(data):
            self._held += len(data) - start
            if self._held > self.limit:
                raise LineTooLong(self.limit)
            parts.append(data[start:] if start else data)
        return lines

    def end(self) -> list[bytes]:
        """What is left after the last newline, as a last line (or nothing)."""
        if not self._parts:
            return []
        line = b"".join(self._parts)
        self._parts.clear()
        self._held = 0
        return [line]


async def split_lines(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[list[bytes]]:
    """The complete lines each read brings, as a list per read that completed any; then what
    is left after the last newline, if anything."""
    lines = Lines(limit)
    async for data in chunks:
        if found := lines.feed(data):
            yield found
    if rest := lines.end():
        yield rest
