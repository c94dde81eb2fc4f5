"""A whole answer, out of the pieces of a streamed one.

A model server asked for a whole answer (`stream: false`) sends nothing until the answer is
done, so a read timeout then caps the whole answer: with `--timeout 2.5`, a 4-second answer
fails where the same answer streamed succeeds. So every upstream kind asks for a stream even
for a whole answer, reads it to its end (each read within the timeout: the wait for the next
byte, as the README says), and puts the pieces together here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import UpstreamError
from .types import Answer, Metrics, Piece, ToolCall


def pieces_of(
    lines: Iterable[bytes], piece_of: Callable[[bytes], Piece | None]
) -> tuple[list[Piece], UpstreamError | None]:
    """The pieces of the lines that came in one read, and the failure a line brought, if
    one did: what came before the failure still reaches the client, then the failure."""
    pieces: list[Piece] = []
    try:
        for line in lines:
            piece = piece_of(line)
            if piece is not None:
                pieces.append(piece)
    except UpstreamError as failure:
        return pieces, failure
    return pieces, None


def whole(pieces: Iterable[Piece], metrics: Metrics, upstream: str | None) -> Answer:
    """The answer the pieces make, in order: text, thinking, tool calls."""
    content: list[str] = []
    thinking: list[str] = []
    tool_calls: list[ToolCall] = []
    for piece in pieces:
        if piece.content:
            content.append(piece.content)
        if piece.thinking:
            thinking.append(piece.thinking)
        if piece.tool_calls:
            tool_calls.extend(piece.tool_calls)
    return Answer(
        content="".join(content),
        metrics=metrics,
        thinking="".join(thinking) if thinking else None,
        tool_calls=tool_calls or None,
        upstream=upstream,
    )
