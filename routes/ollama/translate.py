"""Ollama's bodies as neutral calls."""

from __future__ import annotations

from calls.types import CallRequest, Completion, EmbedRequest

from ..common import is_base64
from .errors import bad
from .schemas import ChatRequest, EmbedBody, EmbeddingsBody, GenerateRequest


def _check_images(images: list[str] | None, where: str) -> None:
    for n, image in enumerate(images or ()):
        if not is_base64(image):
            raise bad(
                f"{where}.images[{n}] is not base64: send each image as base64 text, "
                "without a data: prefix"
            )


def chat_call(body: ChatRequest) -> CallRequest:
    for n, message in enumerate(body.messages):
        if message.images:
            _check_images(message.images, f"messages[{n}]")
    messages = [m.neutral() for m in body.messages]
    return CallRequest(model=body.model, messages=messages, generation=body.generation(body.tools))


def generate_call(body: GenerateRequest) -> CallRequest:
    if not body.prompt and not body.images:
        raise bad(
            "prompt is empty: the gateway passes on completions, not Ollama's requests to "
            "load or unload a model"
        )
    _check_images(body.images, "$")
    completion = Completion(
        prompt=body.prompt,
        suffix=body.suffix,
        system=body.system,
        template=body.template,
        raw=body.raw,
        context=body.context,
        images=body.images,
    )
    return CallRequest(model=body.model, completion=completion, generation=body.generation())


def embed_call(body: EmbedBody) -> EmbedRequest:
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise bad("input is empty: give a text, or a list of texts, to embed")
    return EmbedRequest(
        model=body.model,
        input=texts,
        truncate=body.truncate,
        dimensions=body.dimensions,
        options=body.options,
        keep_alive=body.keep_alive,
    )


def embeddings_call(body: EmbeddingsBody) -> EmbedRequest:
    return EmbedRequest(
        model=body.model, input=[body.prompt], options=body.options, keep_alive=body.keep_alive
    )
