"""A stand-in for an OpenAI-compatible server (llama.cpp's llama-server, vLLM, LM Studio), plus a
launcher for tests.

Written from OpenAI's API reference (chat completions, the chunk object with
`stream_options.include_usage`, completions, embeddings, models, the error object) and
llama.cpp's server README (the `timings` object, `reasoning_content`, `/health`, `/props`,
`/slots`, model `status` in router mode), never from the gateway's code.

How an answer behaves is chosen by directives ``[[name=value]]`` in the last user message
(or the prompt of /v1/completions):

==============  ============================================================================
tokens=N        answer with N tokens (default 5); token i is ``f"o{i} "``
delay=S         sleep S seconds between streamed chunks
think=N         first N chunks carry ``reasoning_content`` ``"r{i} "`` instead of content
tool=NAME       answer with one call of tool NAME, arguments ``{"city": "Paris"}`` streamed in
                three fragments, finish_reason ``tool_calls``
status=CODE     answer at once with that status and an OpenAI error object
error_after=K   stream: K content chunks, then ``data: {"error": {...}}``, and end
stall=K         stream: K content chunks, then silence until the client hangs up
nousage=1       no usage chunk even when asked for
==============  ============================================================================

Models are matched exactly by id, as vLLM and llama-server's router mode do. With an API key
(``--api-key``) every /v1 route needs ``Authorization: Bearer <key>``. A model listed with
``--unloaded`` has ``"status": {"value": "unloaded"}`` in /v1/models, as in llama-server's
router mode.

Test-only: ``GET /_standin/calls`` (one record per completion request) and
``POST /_standin/reset``. Run it as ``python tests/openai_standin.py --port P [--models a,b]``
or with :func:`start_openai_standin`.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import anyio
import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

DEFAULT_MODELS: Final = ["smollm2"]
BUILD: Final = "b9999-standin"
_DIRECTIVE: Final = re.compile(r"\[\[([a-z_]+)=([^\[\]]*)\]\]")
_KNOWN: Final = {"tokens", "delay", "think", "tool", "status", "error_after", "stall", "nousage"}
_encode = msgspec.json.encode
_JSON: Final = "application/json; charset=utf-8"


def _error(status: int, message: str, kind: str, code: Any = None) -> Response:
    body = {"error": {"code": status if code is None else code, "message": message, "type": kind}}
    return Response(_encode(body), status_code=status, media_type=_JSON)


class Call(msgspec.Struct):
    """What the stand-in saw of one completion request."""

    n: int
    path: str
    model: Any = None
    body: Any = None
    authorization: str | None = None
    chunks_sent: int = 0
    finished: bool = False
    disconnected: bool = False


class _State:
    def __init__(self, models: list[str], unloaded: list[str], api_key: str | None) -> None:
        self.models = models
        self.unloaded = set(unloaded)
        self.api_key = api_key
        self.calls: list[Call] = []


def _directives(text: str) -> dict[str, str]:
    found = dict(_DIRECTIVE.findall(text))
    unknown = set(found) - _KNOWN
    if unknown:
        raise ValueError(f"unknown directive {sorted(unknown)[0]}")
    return found


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class _Completion:
    """One /v1/chat/completions or /v1/completions request, answered as the directives say."""

    def __init__(self, state: _State, call: Call, body: dict[str, Any], chat: bool) -> None:
        self.state = state
        self.call = call
        self.body = body
        self.chat = chat
        text = _last_user_text(body.get("messages")) if chat else str(body.get("prompt", ""))
        self.directives = _directives(text)
        d = self.directives
        self.tokens = [f"o{i} " for i in range(int(d.get("tokens", "5")))]
        max_tokens = body.get("max_tokens")
        self.finish = "stop"
        if isinstance(max_tokens, int) and 0 < max_tokens < len(self.tokens):
            self.tokens = self.tokens[:max_tokens]
            self.finish = "length"
        self.delay = float(d.get("delay", "0"))
        self.think = int(d.get("think", "0"))
        self.tool = d.get("tool")
        self.prompt_tokens = len(text.split()) + 1
        self.id = f"chatcmpl-{call.n}"
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            text = (delta or {}).get("content", "")
            choice = {"index": 0, "text": text, "finish_reason": finish}
            kind = "text_completion"
        chunk = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.body.get("model"),
            "choices": [choice],
        }
        return b"data: " + _encode(chunk) + b"\n\n"

    def _usage(self) -> dict[str, Any]:
        completion = len(self.tokens) + self.think + (1 if self.tool else 0)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def _timings(self) -> dict[str, Any]:
        # llama-server's own account, in milliseconds.
        predicted = len(self.tokens) + self.think
        return {
            "prompt_n": self.prompt_tokens,
            "prompt_ms": 12.5,
            "predicted_n": predicted,
            "predicted_ms": 40.0 + predicted,
        }

    async def stream(self, send: Send) -> None:
        d = self.directives
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )

        async def out(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            self.call.chunks_sent += 1

        stall_at = int(d["stall"]) if "stall" in d else None
        error_at = int(d["error_after"]) if "error_after" in d else None
        if self.chat:
            await out(self._chunk({"role": "assistant", "content": ""}))
        for i in range(self.think):
            await out(self._chunk({"reasoning_content": f"r{i} "}))
        for i, token in enumerate(self.tokens):
            if i == stall_at:
                await anyio.sleep_forever()
            if i == error_at:
                error = {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}}
                await out(b"data: " + _encode(error) + b"\n\n")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if self.delay and i:
                await anyio.sleep(self.delay)
            await out(self._chunk({"content": token}))
        if self.tool:
            fragments = ['{"ci', 'ty": "Pa', 'ris"}']
            first = {"index": 0, "id": "call_1", "type": "function"}
            first["function"] = {"name": self.tool, "arguments": ""}
            await out(self._chunk({"tool_calls": [first]}))
            for fragment in fragments:
                await out(
                    self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
                )
        await out(self._chunk({}, "tool_calls" if self.tool else self.finish))
        if self.body.get("stream_options", {}).get("include_usage") and "nousage" not in d:
            usage: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.body.get("model"),
                "choices": [],
                "usage": self._usage(),
                "timings": self._timings(),
            }
            await out(b"data: " + _encode(usage) + b"\n\n")
        self.call.finished = True
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    def whole(self) -> Response:
        content = "".join(self.tokens)
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if self.think:
                message["reasoning_content"] = "".join(f"r{i} " for i in range(self.think))
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": self.finish}
        else:
            choice = {"index": 0, "text": content, "finish_reason": self.finish}
        reply = {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.body.get("model"),
            "choices": [choice],
            "usage": self._usage(),
            "timings": self._timings(),
        }
        self.call.finished = True
        return Response(_encode(reply), media_type=_JSON)


class _Completions:
    """POST /v1/chat/completions (chat) or /v1/completions, as a raw ASGI app, so that it
    controls the stream and sees the client hang up."""

    def __init__(self, state: _State, chat: bool) -> None:
        self.state = state
        self.chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        call = Call(n=len(self.state.calls) + 1, path=request.url.path)
        call.authorization = request.headers.get("authorization")
        self.state.calls.append(call)
        if (no := _refused(self.state, request)) is not None:
            await no(scope, receive, send)
            return
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError as exc:
            await _error(400, f"invalid JSON: {exc}", "invalid_request_error")(scope, receive, send)
            return
        call.body, call.model = body, body.get("model")
        if body.get("model") not in self.state.models:
            message = f"The model `{body.get('model')}` does not exist"
            reply = _error(404, message, "invalid_request_error", "model_not_found")
            await reply(scope, receive, send)
            return
        try:
            completion = _Completion(self.state, call, body, self.chat)
        except ValueError as exc:
            await _error(400, f"stand-in: {exc}", "invalid_request_error")(scope, receive, send)
            return
        if "status" in completion.directives:
            status = int(completion.directives["status"])
            await _error(status, f"stand-in status {status}", "server_error")(scope, receive, send)
            return
        if not body.get("stream"):
            await completion.whole()(scope, receive, send)
            return
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not call.finished:
                    call.disconnected = True
                group.cancel_scope.cancel()

            group.start_soon(watch)
            await completion.stream(send)
            group.cancel_scope.cancel()


def _refused(state: _State, request: Request) -> Response | None:
    if state.api_key is None:
        return None
    if request.headers.get("authorization") != f"Bearer {state.api_key}":
        return _error(401, "Invalid API Key", "authentication_error")
    return None


def create_app(
    models: list[str] | None = None,
    *,
    unloaded: list[str] | None = None,
    api_key: str | None = None,
) -> Starlette:
    state = _State(models or list(DEFAULT_MODELS), unloaded or [], api_key)

    async def list_models(request: Request) -> Response:
        if (no := _refused(state, request)) is not None:
            return no
        data = []
        for name in state.models:
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "standin",
            }
            if state.unloaded:
                value = "unloaded" if name in state.unloaded else "loaded"
                entry["status"] = {"value": value}
            data.append(entry)
        return Response(_encode({"object": "list", "data": data}), media_type=_JSON)

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    async def props(request: Request) -> Response:
        return Response(_encode({"build_info": BUILD, "total_slots": 2}), media_type=_JSON)

    async def embeddings(request: Request) -> Response:
        if (no := _refused(state, request)) is not None:
            return no
        body = msgspec.json.decode(await request.body())
        state.calls.append(
            Call(n=len(state.calls) + 1, path=request.url.path, model=body.get("model"), body=body)
        )
        if body.get("model") not in state.models:
            return _error(
                404, f"The model `{body.get('model')}` does not exist", "invalid_request_error"
            )
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        # Listed out of order on purpose: `index` says which input each vector is for.
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text)), float(i)]}
            for i, text in reversed(list(enumerate(inputs)))
        ]
        tokens = sum(len(str(text).split()) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        reply = {"object": "list", "data": data, "model": body["model"], "usage": usage}
        return Response(_encode(reply), media_type=_JSON)

    async def calls(request: Request) -> Response:
        return Response(_encode(state.calls), media_type=_JSON)

    async def reset(request: Request) -> Response:
        state.calls = []
        return Response(b"{}", media_type=_JSON)

    async def not_found(request: Request, exc: Exception) -> Response:
        # llama-server's answer for a path it does not serve.
        return _error(404, "File Not Found", "not_found_error")

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/props", props, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", _Completions(state, chat=True), methods=["POST"]),
        Route("/v1/completions", _Completions(state, chat=False), methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/_standin/calls", calls, methods=["GET"]),
        Route("/_standin/reset", reset, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found})


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="An OpenAI-compatible stand-in for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--unloaded", default="")
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(_names(args.models), unloaded=_names(args.unloaded), api_key=args.api_key),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=600,
        timeout_graceful_shutdown=1,
    )


_SCRIPT: Final = Path(__file__).resolve()


class OpenAIStandIn:
    def __init__(self, url: str, process: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self.url = url
        self.process = process
        self._stderr = stderr
        self._client = httpx.Client(base_url=url, timeout=5.0, trust_env=False)

    def calls(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._client.get("/_standin/calls").json()
        return found

    def stop(self) -> None:
        self._client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()

    def __enter__(self) -> OpenAIStandIn:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_openai_standin(
    *, port: int, models: list[str] | None = None, api_key: str | None = None
) -> OpenAIStandIn:
    """Start the stand-in on `port` (a free one the caller picked) and wait until it answers."""
    command = [sys.executable, str(_SCRIPT), "--port", str(port)]
    if models:
        command += ["--models", ",".join(models)]
    if api_key:
        command += ["--api-key", api_key]
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the stand-in
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200:
                return OpenAIStandIn(url, process, stderr)
        time.sleep(0.05)
    process.kill()
    stderr.seek(0)
    raise RuntimeError(
        f"the OpenAI stand-in did not start: {stderr.read().decode(errors='replace')}"
    )


if __name__ == "__main__":
    main()
