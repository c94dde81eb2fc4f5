"""The seed's body as a neutral call."""

from __future__ import annotations

from calls.types import CallRequest, Generation, Labels, Message

from .schemas import AskRequest


def call_of(req: AskRequest) -> tuple[CallRequest, Labels]:
    """The template as the system prompt, the content as the user's message, the labels as
    the body gave them, and the generation fields beyond the seed's as they came."""
    messages = [Message("system", req.template)] if req.template else []
    messages.append(Message("user", req.content))
    labels = Labels(project=req.project, process_id=req.process_id, subprocess_id=req.subprocess_id)
    generation = Generation(
        options=req.options, format=req.format, think=req.think, keep_alive=req.keep_alive
    )
    return CallRequest(model=req.agent, messages=messages, generation=generation), labels
