"""The seed's event stream: Server-Sent Events `start`, a `token` per chunk, then `done` or
`error`, every event numbered from 0 without gaps (what a resume's `Last-Event-ID` names)."""

from __future__ import annotations

import msgspec

from calls.events import Done, Event, Failed, Loading, Pieces, Queued, Started

from ..errors import error_body
from ..streaming import SSEFraming
from .schemas import LoadingEvent, QueuedEvent, StartEvent, TokenEvent, Usage

_encode = msgspec.json.Encoder().encode


def _event(name: bytes, seq: int, data: msgspec.Struct) -> bytes:
    # msgspec escapes every newline inside JSON strings, so one `data:` line always suffices.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name, _encode(data))


class SeedEvents(SSEFraming):
    """Frames one call's events as the seed's SSE."""

    __slots__ = ("resume", "seq")

    def __init__(self, resume: str | None = None) -> None:
        self.seq = 0
        # A resumable stream's handle, told in its `start` event.
        self.resume = resume

    def __call__(self, event: Event) -> bytes:
        if isinstance(event, Pieces):
            # Every token that one read brought goes out in one write: when the gateway
            # falls behind, it catches up in fewer, larger sends.
            seq = self.seq
            out = []
            for piece in event.pieces:
                if piece.content or piece.thinking:
                    seq += 1
                    out.append(_event(b"token", seq, TokenEvent(piece.content, piece.thinking)))
            self.seq = seq
            return out[0] if len(out) == 1 else b"".join(out)
        if isinstance(event, Started):
            return _event(b"start", 0, StartEvent(event.id, event.model, self.resume))
        if isinstance(event, Done):
            self.seq += 1
            return _event(b"done", self.seq, Usage.of(event.record))
        if isinstance(event, Failed):
            self.seq += 1
            return _event(b"error", self.seq, error_body(event.error))
        if isinstance(event, Queued):
            self.seq += 1
            return _event(b"queued", self.seq, QueuedEvent(event.position, event.ahead))
        if isinstance(event, Loading):
            self.seq += 1
            return _event(b"loading", self.seq, LoadingEvent(event.upstream, event.model))
        return b""

    def frames(self, event: Event) -> list[bytes]:
        """Each SSE event on its own, for a resumable stream, which keeps them apart so that
        a resume can begin between two that one read brought (routes/resuming.py)."""
        if isinstance(event, Pieces):
            out = []
            for piece in event.pieces:
                if piece.content or piece.thinking:
                    self.seq += 1
                    out.append(
                        _event(b"token", self.seq, TokenEvent(piece.content, piece.thinking))
                    )
            return out
        data = self(event)
        return [data] if data else []
