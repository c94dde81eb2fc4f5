"""GPU time: the sharing rule of upstreams.gputime on a clock the test moves, what the
upstream's own report counts for, and `gpus=` / `cost=` in the configuration."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from calls.types import Metrics
from ollama_host.settings import parse_settings
from upstreams.config import ConfigError, load_file, parse_flag
from upstreams.gputime import GpuClock, Lease, charge, reported


class Time:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_call_alone_has_the_whole_gpu() -> None:
    time = Time()
    clock = GpuClock(1, time)
    lease = clock.start()
    time.now = 10.0

    assert clock.stop(lease) == (10.0, 10.0)


def test_calls_side_by_side_share_the_busy_seconds() -> None:
    time = Time()
    clock = GpuClock(1, time)
    a = clock.start()
    time.now = 4.0  # a alone: 4 s
    b = clock.start()
    time.now = 8.0  # a and b: 2 s each
    held_a, share_a = clock.stop(a)
    time.now = 10.0  # b alone: 2 s
    held_b, share_b = clock.stop(b)

    assert (held_a, share_a) == (8.0, 6.0)
    assert (held_b, share_b) == (6.0, 4.0)
    assert share_a + share_b == 10.0  # the busy time, once


def test_with_two_gpus_two_calls_each_have_one() -> None:
    time = Time()
    clock = GpuClock(2, time)
    leases = [clock.start() for _ in range(4)]
    time.now = 3.0  # four calls on two GPUs: half a GPU each

    shares = [clock.stop(lease)[1] for lease in leases]

    assert shares == [1.5, 1.5, 1.5, 1.5]


def test_the_shares_never_exceed_the_time_times_the_gpus() -> None:
    """Random arrivals and departures: over the whole run, the shares add up to at most the
    elapsed time times the GPUs, and to exactly the integral of min(running, gpus)."""
    rng = random.Random(21)
    for gpus in (1, 2, 3):
        time = Time()
        clock = GpuClock(gpus, time)
        open_: list[Lease] = []
        total = expected = 0.0
        for _ in range(2000):
            step = rng.random()
            expected += step * min(len(open_), gpus)
            time.now += step
            if open_ and (rng.random() < 0.5 or len(open_) > 12):
                lease = open_.pop(rng.randrange(len(open_)))
                total += clock.stop(lease)[1]
            else:
                open_.append(clock.start())
        for lease in open_:
            total += clock.stop(lease)[1]
        assert total <= time.now * gpus + 1e-6
        assert math.isclose(total, expected, rel_tol=1e-9)


def test_the_upstreams_own_time_counts_scaled_to_the_share() -> None:
    # Alone: the upstream's own figure, as it said it.
    assert charge(2.5, held=3.0, share=3.0, cost=None).seconds == 2.5
    # Beside another call on one GPU: half of it.
    assert charge(2.5, held=3.0, share=1.5, cost=None).seconds == 1.25
    # A claim beyond the time the slot was held counts as that time, never more.
    assert charge(100.0, held=3.0, share=3.0, cost=None).seconds == 3.0
    assert charge(100.0, held=3.0, share=1.0, cost=None).seconds == 1.0
    # No figure: the share itself.
    assert charge(None, held=3.0, share=2.0, cost=None).seconds == 2.0


def test_cost_is_the_price_of_the_gpu_hours() -> None:
    use = charge(None, held=1800.0, share=1800.0, cost=2.5)

    assert use.seconds == 1800.0
    assert use.cost == 1.25
    assert charge(None, held=1.0, share=1.0, cost=None).cost is None


def test_what_the_upstream_reports() -> None:
    ollama = Metrics(
        load_seconds=1.0, prompt_eval_seconds=0.25, eval_seconds=2.0, upstream_seconds=3.5
    )
    llama_server = Metrics(prompt_eval_seconds=0.125, eval_seconds=0.5)

    assert reported(ollama) == 3.25  # load + prompt evaluation + generation, not the total
    assert reported(llama_server) == 0.625
    assert reported(Metrics(upstream_seconds=0.75)) == 0.75  # an Ollama embedding
    assert reported(Metrics()) is None
    assert reported(None) is None
    # Untrusted figures: nonsense is no figure.
    assert reported(Metrics(eval_seconds=-5.0)) is None
    assert reported(Metrics(eval_seconds=float("nan"))) is None
    assert reported(Metrics(eval_seconds=float("inf"), prompt_eval_seconds=1.0)) == 1.0


def test_gpus_and_cost_in_a_flag_and_a_file(tmp_path: Path) -> None:
    spec = parse_flag("gpu1=http://10.0.0.5:11434,gpus=4,cost=2.50")

    assert (spec.gpus, spec.cost) == (4, 2.5)
    assert (parse_flag("g=http://h:1").gpus, parse_flag("g=http://h:1").cost) == (1, None)


def test_gpus_and_cost_in_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text('[upstream.gpu1]\nurl = "http://10.0.0.5:11434"\ngpus = 2\ncost = 3\n')

    (spec,) = load_file(path)

    assert (spec.gpus, spec.cost) == (2, 3.0)


@pytest.mark.parametrize(
    "option", ["cost=abc", "cost=", "cost=-1", "cost=nan", "cost=inf", "cost=1e12"]
)
def test_a_cost_that_is_not_a_price_stops_the_start_naming_the_upstream(option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_flag(f"gpu1=http://10.0.0.5:11434,{option}")

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--upstream 'gpu1=http://10.0.0.5:11434,")
    assert "cost must be a price per GPU-hour" in message


@pytest.mark.parametrize("option", ["gpus=0", "gpus=two", "gpus=1.5", "gpus=100000"])
def test_a_gpu_count_that_is_not_one_stops_the_start(option: str) -> None:
    with pytest.raises(ConfigError, match="gpus must be how many GPUs"):
        parse_flag(f"gpu1=http://10.0.0.5:11434,{option}")


def test_a_cost_that_is_not_a_number_in_a_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text('[upstream.gpu1]\nurl = "http://10.0.0.5:11434"\ncost = "cheap"\n')

    with pytest.raises(ConfigError, match=r"\[upstream.gpu1\]: cost must be a price"):
        load_file(path)


def test_the_start_is_refused_in_one_line_naming_the_upstream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--upstream", "gpu1=http://10.0.0.5:11434,cost=cheap"], {})

    assert exited.value.code == 2
    said = [line for line in capsys.readouterr().err.splitlines() if "cost" in line]
    assert len(said) == 1
    assert "gpu1=http://10.0.0.5:11434,cost=cheap" in said[0]
    assert "cost must be a price per GPU-hour" in said[0]
