"""The request log's writer thread: survives a broken stream, loses nothing at stop."""

from __future__ import annotations

import io
import logging
import time

import pytest

from ollama_host import requestlog


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
