"""ollama_host/requestlog.py: request ids on every response, the request log's lines (in
process through httpx.ASGITransport), and its writer thread, which survives a broken stream and
loses nothing at stop.

The log of a real process (--log-json, configure_logging) is in test_operating.py.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time

import httpx
import pytest

from ollama_host import requestlog
from tests.asgi import gateway_log
from tests.helpers import aonly_record, ask, read_events, unique


class BrokenFlush(io.StringIO):
    def flush(self) -> None:
        raise BrokenPipeError("stderr is gone")


def _logger(thread: requestlog._LogThread, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [requestlog._Enqueue(thread.queue)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_a_stream_that_cannot_flush_does_not_stop_the_log_thread() -> None:
    handler = requestlog._Lines(BrokenFlush())
    thread = requestlog._LogThread(handler)
    logger = _logger(thread, "test.broken")
    for n in range(3):
        logger.info("line %d", n)
        time.sleep(3 * thread.BATCH_SECONDS)  # one batch each

    alive = thread._thread.is_alive()
    thread.stop()

    assert alive
    assert handler.stream.getvalue().count("line") == 3


def test_stop_writes_out_everything_queued() -> None:
    stream = io.StringIO()
    handler = requestlog._Lines(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    thread = requestlog._LogThread(handler)
    logger = _logger(thread, "test.stop")
    for n in range(1000):
        logger.info("line %d", n)

    thread.stop()

    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(1000)]


class Recursing:
    def __str__(self) -> str:
        return str(self)


def test_a_record_that_cannot_be_formatted_is_reported_and_the_rest_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = io.StringIO()
    handler = requestlog._Lines(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    thread = requestlog._LogThread(handler)
    logger = _logger(thread, "test.recursing")
    logger.info("before")
    logger.info("bad %s", Recursing())  # RecursionError, which StreamHandler.emit re-raises
    logger.info("after")
    time.sleep(3 * thread.BATCH_SECONDS)

    alive = thread._thread.is_alive()
    thread.stop()

    assert alive
    assert stream.getvalue().splitlines() == ["before", "after"]
    assert "RecursionError" in capsys.readouterr().err  # logging's handleError reported it


# -- request ids ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/api/v1/ai/models"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/static/docs/swagger-init.js"),
        ("GET", "/no/such/route"),
        ("DELETE", "/api/v1/ai/models"),
        ("GET", "/api/v1/admin/dashboard?limit=0"),
    ],
)
async def test_every_response_has_a_request_id(
    aclient: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await aclient.request(method, path)

    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{20}", request_id)
    if response.status_code >= 400:
        assert response.json()["error"]["request_id"] == request_id


@pytest.mark.anyio
async def test_request_ids_differ(aclient: httpx.AsyncClient) -> None:
    ids = {(await aclient.get("/health")).headers["x-request-id"] for _ in range(5)}

    assert len(ids) == 5


@pytest.mark.anyio
async def test_a_stream_s_request_id_is_its_record_s(aclient: httpx.AsyncClient) -> None:
    project = unique()

    response = await aclient.post("/api/v1/ai/ask_async", json=ask(project=project))
    events, _ = read_events(response)

    request_id = response.headers["x-request-id"]
    assert json.loads(events[0].data)["id"] == request_id
    assert (await aonly_record(aclient, project))["id"] == request_id


# -- the request log's lines ----------------------------------------------------------------


def _line_of(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    """The request's log line: logged once the response has gone, which in process is before
    the client has it."""
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "ollama_host.requests" and f"id={request_id} " in record.getMessage()
    ]
    assert len(lines) == 1, gateway_log(caplog.records)[-3000:]
    return lines[0]


@pytest.mark.anyio
async def test_one_log_line_per_request_without_prompt_or_key(
    aclient: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_prompt = unique("prompt")
    secret_key = unique("key")
    body = ask(content=f"{secret_prompt} [[tokens=3]]", user_key=secret_key, project=unique())

    response = await aclient.post("/api/v1/ai/ask_sync", json=body)

    request_id = response.headers["x-request-id"]
    line = _line_of(caplog, request_id)
    assert " method=POST path=/api/v1/ai/ask_sync status=200 " in line
    assert " model=llama3 call=ok tokens_in=2 tokens_out=3 streamed=false" in line
    assert re.search(r" seconds=[0-9.e-]+ ", line)
    assert secret_prompt not in gateway_log(caplog.records)
    assert secret_key not in gateway_log(caplog.records)


@pytest.mark.anyio
async def test_the_log_has_the_path_but_never_the_query_string(
    aclient: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_prompt = unique("prompt")

    response = await aclient.get(
        "/api/v1/ai/ask_async", params={"agent": "llama3", "content": secret_prompt}
    )
    read_events(response)

    line = _line_of(caplog, response.headers["x-request-id"])
    assert " path=/api/v1/ai/ask_async status=200 " in line
    assert " call=ok " in line
    assert " streamed=true" in line
    assert secret_prompt not in gateway_log(caplog.records)


@pytest.mark.anyio
async def test_a_failed_call_logs_its_error_code(
    aclient: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await aclient.post("/api/v1/ai/ask_sync", json=ask(agent="nosuchmodel"))

    line = _line_of(caplog, response.headers["x-request-id"])
    assert " status=404 " in line
    assert " call=error " in line
    assert line.endswith(" error=model_not_found")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("two words", '"two words"'),
        ('quo"te', '"quo\\"te"'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
        (3, "3"),
        (None, "null"),
        (True, "true"),
    ],
)
def test_one_request_is_always_one_line(value: object, text: str) -> None:
    assert str(requestlog._Line({"k": value})) == f"k={text}"


def test_the_json_format_has_the_request_fields() -> None:
    record = logging.LogRecord("ollama_host.requests", logging.INFO, __file__, 1, "m", (), None)
    record.fields = {"id": "x", "status": 200}

    line = json.loads(requestlog.JSONFormatter().format(record))

    assert {"time", "level", "logger", "message"} <= set(line)
    assert (line["level"], line["logger"], line["id"], line["status"]) == (
        "info",
        "ollama_host.requests",
        "x",
        200,
    )


def test_a_request_line_queued_directly_is_the_line_log_info_would_write() -> None:
    """The log thread makes a request's LogRecord itself (7 µs an ask off the event loop): the
    line it writes, as text or JSON, is the one logging would have written, at the time the
    request ended."""
    fields = {"id": "0661", "method": "POST", "path": "/api/chat", "status": 200, "seconds": 0.1}
    ended = time.time() - 5
    queued = requestlog._Request(dict(fields), ended).record()
    logged = requestlog.log.makeRecord(
        requestlog.log.name,
        logging.INFO,
        "",
        0,
        "request %s",
        (requestlog._Line(fields),),
        None,
        extra={"fields": fields},
    )
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    assert queued.getMessage() == logged.getMessage()
    assert json.loads(requestlog.JSONFormatter().format(queued)) | {"time": None} == json.loads(
        requestlog.JSONFormatter().format(logged)
    ) | {"time": None}
    assert queued.created == ended
    assert text.format(queued).split(" INFO ")[1] == text.format(logged).split(" INFO ")[1]


def test_a_request_line_goes_through_logging_when_other_handlers_listen() -> None:
    """Queued directly only while the log thread's handler is the root's only one: with
    another (pytest's capture, a user's), the line takes logging's own way, to reach it."""
    thread = requestlog._LogThread(requestlog._Lines(io.StringIO()))
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        root.handlers[:] = [requestlog._Enqueue(thread.queue)]
        thread.root_handlers = list(root.handlers)
        alone = thread.serves(requestlog.log)
        root.handlers.append(logging.NullHandler())
        shared = thread.serves(requestlog.log)
    finally:
        root.handlers[:] = saved
        thread.stop()

    assert (alone, shared) == (True, False)
