"""/health: is the gateway up, does Ollama answer, does the usage store write."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ollama_client import OllamaError
from schemas import Health, OllamaHealth, StoreHealthReply
from settings import __version__

from .common import JSON, gateway_of
from .openapi import Operation, Paths, Reply

# /health must answer quickly even when Ollama hangs.
OLLAMA_PROBE_SECONDS = 3.0


async def health(request: Request) -> Response:
    gateway = gateway_of(request)
    address = gateway.ollama.address
    ollama = OllamaHealth(status="down", address=address)
    try:
        with anyio.fail_after(OLLAMA_PROBE_SECONDS):
            ollama = OllamaHealth(
                status="up", address=address, version=await gateway.ollama.version()
            )
    except OllamaError as exc:
        ollama.error = exc.message
    except TimeoutError:
        ollama.error = f"Ollama at {address} did not answer within {OLLAMA_PROBE_SECONDS:g} s"
    store = gateway.store.health()
    ok = ollama.status == "up" and store.status == "ok"
    return JSON(
        Health(
            status="ok" if ok else "degraded",
            gateway="up",
            version=__version__,
            ollama=ollama,
            store=StoreHealthReply(
                status=store.status, pending=store.pending, error=store.error, damaged=store.damaged
            ),
        )
    )


routes = [Route("/health", health, methods=["GET"])]


openapi: Paths = {
    "/health": {
        "GET": Operation(
            summary="Is the gateway up, does Ollama answer, does the store write",
            tag="operations",
            description="Always 200 while the gateway runs: `status` is `ok` when Ollama "
            "answers and the usage store writes, `degraded` otherwise (see `ollama.status` "
            "and `store.status`).",
            replies={200: Reply(description="The gateway's health.", json=Health)},
        )
    }
}
