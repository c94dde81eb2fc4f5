"""A whole answer, asked for as a stream.

A model server asked for a whole answer (`stream: false`) sends nothing until the answer is
done, so a read timeout then caps the whole answer: with `--timeout 2.5`, a 4-second answer
fails where the same answer streamed succeeds. Asked for as a stream and collected here, the
timeout means what the README says: the wait for the server's next byte.
"""

from __future__ import annotations

from .errors import UpstreamBadResponse
from .types import Answer, ToolCall
from .upstream import AnswerStream


async def collect(stream: AnswerStream, max_chars: int) -> Answer:
    """The whole answer `stream` brings, at most `max_chars` characters of text and thinking;
    the stream is closed afterwards, whatever happens."""
    content: list[str] = []
    thinking: list[str] = []
    tool_calls: list[ToolCall] = []
    size = 0
    try:
        async for batch in stream.batches():
            for piece in batch:
                if piece.content:
                    content.append(piece.content)
                    size += len(piece.content)
                if piece.thinking:
                    thinking.append(piece.thinking)
                    size += len(piece.thinking)
                if piece.tool_calls:
                    tool_calls.extend(piece.tool_calls)
            if size > max_chars:
                raise UpstreamBadResponse(
                    f"the upstream's answer is longer than {max_chars} characters "
                    "(--max-upstream-body); it was cut off there"
                )
    finally:
        await stream.aclose()
    metrics = stream.metrics
    if metrics is None:  # batches() ended without its final account: it raises first
        raise UpstreamBadResponse("the upstream's stream ended without its final account")
    return Answer(
        content=content[0] if len(content) == 1 else "".join(content),
        metrics=metrics,
        thinking="".join(thinking) if thinking else None,
        tool_calls=tool_calls or None,
        upstream=stream.upstream,
        attempts=stream.attempts,
    )
