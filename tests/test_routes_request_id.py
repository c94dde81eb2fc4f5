"""routes/request_id.py: ids that sort by the time they were made."""

from __future__ import annotations

import re
import time

import pytest

from routes import request_id


class SteppingClock:
    """The `time` module as the request ids see it, with a wall clock set by hand."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def time_ns(self) -> int:
        return self.now_ns

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_ids_sort_by_time_even_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SteppingClock(2_000_000_000_000_000_000)
    monkeypatch.setattr(request_id, "time", clock)
    ids = [request_id.new_id()]
    clock.now_ns -= 10**12  # the clock steps back a thousand seconds
    ids += [request_id.new_id() for _ in range(3)]

    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert all(re.fullmatch(r"[0-9a-f]{20}", i) for i in ids)
