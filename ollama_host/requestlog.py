"""The request log: one line per request, as text or as JSON.

`RequestLog` is plain ASGI (no BaseHTTPMiddleware, which would put each response
through a memory stream): it gives every request an id, adds it to the response
as `X-Request-Id`, and logs one line when the request ends. An ask uses the same
id for its usage record (a front reads it from `routes.request_id.current`), so the header,
the log line and the record all agree. Prompts, answers and keys stay out of the log
unless `--log-content` is given, and even then the user_key is never logged.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from routes.request_id import RequestInfo, current, new_id
from routes.timing import SERVER_TIMING, server_timing

if TYPE_CHECKING:
    from ollama_host.settings import Settings

log = logging.getLogger("ollama_host.requests")
_encode = msgspec.json.Encoder().encode
_HEADER = b"x-request-id"


class RequestLog:
    def __init__(self, app: ASGIApp, *, content: bool = False) -> None:
        self.app = app
        self.content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = RequestInfo(new_id(), started)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                timing = (SERVER_TIMING, server_timing(info, time.perf_counter()))
                # An ask sets its own header (its call id is this id); anything else gets ours.
                # A plain loop: any() over a generator cost twice as much, on every response.
                for name, _ in headers:
                    if name.lower() == _HEADER:
                        headers = [*headers, timing]
                        break
                else:
                    headers = [*headers, (_HEADER, info.id.encode()), timing]
                message = {**message, "headers": headers}
            await send(message)

        # For the 500 handler, which runs outside this middleware (and this context).
        scope.setdefault("state", {})["request_id"] = info.id
        token = current.set(info)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)
            # 0: the app raised before answering; Starlette's error handler answers 500.
            self._log(scope, info, status or 500, time.perf_counter() - started)

    def _log(self, scope: Scope, info: RequestInfo, status: int, seconds: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        # The path only: a GET stream's query string holds the prompt.
        fields: dict[str, Any] = {
            "id": info.id,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "seconds": round(seconds, 6),
        }
        if info.limits_local:
            fields["limits"] = "local"
        record = info.record
        if record is not None:
            fields.update(
                model=record.model_name,
                call=record.status,
                tokens_in=record.input_tokens,
                tokens_out=record.output_tokens,
                streamed=record.streamed,
            )
            if record.error_code:
                fields["error"] = record.error_code
            if self.content:
                fields["input"] = [[m.role, m.content] for m in record.input]
                fields["output"] = record.output
        # The line's text is made when the log thread formats it, not here on the event loop;
        # with that thread in place, even its LogRecord is (making one cost 7 µs an ask).
        listener = _listener
        if listener is not None and listener.serves(log):
            listener.queue.put(_Request(fields, time.time()))
        else:
            log.info("request %s", _Line(fields), extra={"fields": fields})


class _Request:
    """A request's line, queued for the log thread before it is a LogRecord."""

    __slots__ = ("created", "fields")

    def __init__(self, fields: dict[str, Any], created: float) -> None:
        self.fields = fields
        self.created = created

    def record(self) -> logging.LogRecord:
        made = log.makeRecord(
            log.name,
            logging.INFO,
            "",
            0,
            "request %s",
            (_Line(self.fields),),
            None,
            extra={"fields": self.fields},
        )
        # The moment the request ended, not the moment the thread got to it.
        made.relativeCreated -= (made.created - self.created) * 1000
        made.created = self.created
        made.msecs = (self.created - int(self.created)) * 1000
        return made


class _Line:
    """`key=value ...` of a request's fields, built only when the line is formatted."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{key}={_text(value)}" for key, value in self.fields.items())


def _text(value: object) -> str:
    # Plain words stay plain; anything with spaces, quotes or newlines is JSON-quoted,
    # so one request is always one line.
    if isinstance(value, str) and value.isprintable() and not _QUOTE.intersection(value):
        return value or '""'
    return _encode(value).decode()


_QUOTE = frozenset(' "=')


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus a request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return _encode(doc).decode()


class _Enqueue(logging.handlers.QueueHandler):
    """Hand records to the log thread as they are: formatting happens there, not here."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _Lines(logging.StreamHandler):  # type: ignore[type-arg]
    """StreamHandler that the log thread hands whole batches: one write and flush each."""

    def write_batch(self, records: list[logging.LogRecord]) -> None:
        text: list[str] = []
        for record in records:
            # Per record, everything: StreamHandler.emit lets RecursionError through, and
            # one bad record (a __str__ that fails or recurses) must not end the thread.
            try:
                if self.filter(record):
                    text.append(self.format(record) + self.terminator)
            except Exception:  # noqa: BLE001 (logging's own rule: report, carry on)
                self.handleError(record)
        if not text:
            return
        # A stream that cannot take it (stderr gone) has nowhere to report to.
        with contextlib.suppress(Exception), self.lock or contextlib.nullcontext():
            self.stream.write("".join(text))
            self.stream.flush()


class _LogThread:
    """Formats and writes queued log records in batches, off the event loop.

    Like logging's QueueListener, but it wakes at most every BATCH_SECONDS and writes all
    that queued meanwhile in one write: a listener woken per record (a futex wake for the
    loop's put, then a format, a write and a flush in the thread) took a tenth of the
    gateway's core at one client.
    """

    BATCH_SECONDS = 0.01
    _STOP = object()

    def __init__(self, handler: _Lines) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.handler = handler
        # The root logger's handlers while they are this thread's alone (configure_logging).
        self.root_handlers: list[logging.Handler] = []
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        records = self.queue
        while True:
            batch = [records.get()]
            time.sleep(self.BATCH_SECONDS)
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(records.get_nowait())
            stop = any(record is self._STOP for record in batch)
            self.handler.write_batch(
                [r.record() if isinstance(r, _Request) else r for r in batch if r is not self._STOP]
            )
            if stop:
                return

    def serves(self, logger: logging.Logger) -> bool:
        """Whether records of `logger` end up in this thread and nowhere else, so that a
        request's line may be queued here directly."""
        return (
            logger.propagate
            and not logger.handlers
            and not logger.filters
            and self.root_handlers == logging.getLogger().handlers
        )

    def stop(self) -> None:
        """Write out what is queued, then end the thread."""
        if self._thread.is_alive():
            self.queue.put(self._STOP)
            self._thread.join()


_listener: _LogThread | None = None


def configure_logging(settings: Settings) -> None:
    """Log to stderr from a thread of its own: a request's line costs the event loop a
    queue put, not a format and a write (measured: a third of the throughput at c=64)."""
    global _listener
    # The logging HOWTO's "Optimization" advice: no caller lookup, no thread or process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _Lines(sys.stderr)
    if settings.log_json:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous, _listener = _listener, _LogThread(handler)
    # Written out at exit, after the last request's line.
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(_listener.queue)]
    _listener.root_handlers = list(root.handlers)
    if previous is not None:
        # Only now: what was logged until the switch is still written out.
        previous.stop()
    root.setLevel(settings.log_level.upper())
    # httpx logs every request URL at INFO; the gateway logs each request itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
