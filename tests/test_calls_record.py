"""calls/record.py: a call's account, and the one record it becomes."""

from __future__ import annotations

from access.identity import Caller
from calls.record import Account
from calls.types import CallRequest, Labels, Message, Metrics, Piece


def call(max_output: int = 1000) -> Account:
    request = CallRequest(model="llama3", messages=[Message("user", "hi")])
    return Account(
        "0661",
        request,
        Caller(),
        Labels(project="p"),
        front="seed",
        endpoint="/api/v1/ai/ask_async",
        streamed=True,
        max_output=max_output,
    )


def test_durations_are_kept_to_the_nanosecond_without_float_noise() -> None:
    """An OpenAI-compatible server reports milliseconds; 178.585 / 1000 is
    0.17858500000000002 in floats, which the record must not keep."""
    record = call().finish("ok", Metrics(eval_seconds=178.585 / 1000, load_seconds=1e-9))

    assert record is not None
    assert record.eval_seconds == 0.178585
    assert record.load_seconds == 1e-9


def test_a_long_answer_keeps_its_head_and_says_how_long_it_was() -> None:
    account = call(max_output=5)
    account.add([Piece("abc"), Piece("defg", thinking="hmm")])

    record = account.finish("ok", Metrics(output_tokens=2))

    assert record is not None
    assert (record.output, record.output_truncated, record.output_chars) == ("abcde", True, 7)
    assert record.thinking == "hmm"


def test_chunks_count_when_the_upstream_never_said_how_many_tokens() -> None:
    """Thinking-only and tool-call-only chunks count too: a stream cancelled while the model
    thinks is charged for what it generated."""
    account = call()
    account.add([Piece("", thinking="let me see"), Piece("", thinking="more"), Piece("hi")])

    record = account.finish("cancelled")

    assert record is not None
    assert (record.output_tokens, record.tokens_estimated) == (3, True)


def test_a_call_is_finished_once() -> None:
    account = call()

    first = account.finish("ok", Metrics())
    second = account.finish("cancelled")

    assert first is not None
    assert second is None
    assert account.record is first


def test_an_absurd_count_is_recorded_as_an_estimate_not_as_reported() -> None:
    account = call()
    account.add([Piece("a "), Piece("b")])

    record = account.finish("ok", Metrics(input_tokens=-1, output_tokens=2**63, eval_seconds=1e20))

    assert record is not None
    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (None, 2, None)
    assert record.tokens_estimated
    assert record.eval_seconds is None
    assert record.status == "ok"


def test_a_failovers_second_wait_for_a_slot_adds_to_the_first() -> None:
    """The router grants a slot once per upstream it tries: after a failover the record's
    queue wait is both waits, and the upstream's time is what is left of the span."""
    account = call()
    account.queued(0.25)
    account.queued(0.5)
    record = account.finish("ok", Metrics())

    assert account.queue_seconds == 0.75
    assert record is not None
    assert record.queue_seconds == 0.75
