"""A spec-exact Server-Sent Events parser for tests.

Implements the WHATWG HTML "event stream interpretation" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation)
the way a browser's EventSource applies it, so a test sees exactly the events a browser would:

* lines end with CRLF, LF or CR; a CR at the end of one chunk followed by LF at the start of the
  next is ONE line ending;
* one leading U+FEFF (byte order mark) at the very start of the stream is ignored;
* ``:comment`` lines are ignored by browsers; here they are also recorded in ``comments`` (with
  one leading space stripped, like a field value) so tests can check keep-alives;
* ``field: value`` loses exactly one leading space of the value; a line without a colon is a
  field name with an empty value; unknown fields are ignored;
* a blank line dispatches: nothing if the data buffer is empty, otherwise one event with the
  trailing LF removed from the data and type "message" unless ``event`` set one;
* the last event id persists across events (the browser's ``lastEventId``);
* anything after the last blank line is an incomplete event and is never dispatched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# CRLF must be tried before a lone CR so that "\r\n" is one line ending.
_LINE_END: Final = re.compile(r"\r\n|\r|\n")
_DIGITS: Final = re.compile(r"[0-9]+")  # ASCII digits only; str.isdigit() accepts others


@dataclass(frozen=True)
class SSEEvent:
    event: str  # the event type ("message" unless an event field set another)
    data: str
    id: str  # the last event id in effect when this event was dispatched
    retry: int | None  # a valid retry field inside this event's block, else None


class SSEParser:
    """Incremental parser: feed() text chunks split anywhere, get complete events back."""

    def __init__(self) -> None:
        self.comments: list[str] = []
        self.last_event_id = ""
        # The reconnection time a browser would now use (persists, like last_event_id).
        self.retry: int | None = None
        self._buffer = ""  # an unterminated line carried over to the next chunk
        self._at_start = True  # for the one leading BOM the spec allows
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF is part of it
        self._data: list[str] = []
        self._event_type = ""
        self._block_retry: int | None = None

    def feed(self, chunk: str) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._at_start:
            self._at_start = False
            chunk = chunk.removeprefix("\ufeff")
        if self._skip_lf:
            self._skip_lf = False
            chunk = chunk.removeprefix("\n")
        text = self._buffer + chunk
        events: list[SSEEvent] = []
        pos = 0
        for match in _LINE_END.finditer(text):
            self._line(text[pos : match.start()], events)
            pos = match.end()
        if pos == len(text) and text.endswith("\r"):
            # The CR ended a line already (no need to wait), but an LF opening the next chunk
            # belongs to the same line ending.
            self._skip_lf = True
        self._buffer = text[pos:]
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")  # exactly one space, never more
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and _DIGITS.fullmatch(value):
            self.retry = self._block_retry = int(value)
        # any other field is ignored

    def _dispatch(self, events: list[SSEEvent]) -> None:
        # The spec appends value + LF for each data line and then drops one trailing LF, which
        # is the same as joining the lines with LF.
        if self._data:
            events.append(
                SSEEvent(
                    event=self._event_type or "message",
                    data="\n".join(self._data),
                    id=self.last_event_id,
                    retry=self._block_retry,
                )
            )
        self._data = []
        self._event_type = ""
        self._block_retry = None


def parse_sse(text: str) -> list[SSEEvent]:
    """Events in a complete stream; an unterminated last event is discarded, as browsers do."""
    return SSEParser().feed(text)
