"""Ollama's wire format, as msgspec structs: the only place that knows it.

Every metric field may be absent (Go `omitempty`), so each is optional here and a
missing count stays unknown (None) instead of becoming zero.
"""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str


class ChatRequest(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Message]
    stream: bool = True


class ChunkMessage(msgspec.Struct):
    content: str = ""
    thinking: str | None = None


class ChatChunk(msgspec.Struct):
    """One line of a streamed /api/chat answer, or the whole non-streamed answer."""

    message: ChunkMessage | None = None
    done: bool = False
    done_reason: str | None = None
    error: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class ErrorReply(msgspec.Struct):
    error: str = ""


class TagModel(msgspec.Struct):
    name: str


class Tags(msgspec.Struct):
    models: list[TagModel] = msgspec.field(default_factory=list)


class Version(msgspec.Struct):
    version: str = ""
