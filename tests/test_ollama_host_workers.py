"""--workers N: which deaths stop the service, which are restarted, and how a crash loop
backs off. Real processes throughout: the process that runs the workers, over small worker
scripts that die on cue, and the whole gateway with PostgreSQL, whose workers get kill -9.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ollama_host.workers import MAX_BACKOFF, restart_delay
from tests import pg
from tests.gateway_proc import ROOT, free_port, start_gateway
from tests.helpers import ask
from tests.ollama_standin import StandIn

pytestmark = [pytest.mark.slow, pytest.mark.faults]

ADMIN_JSON = {"Accept": "application/json"}

# A stand-in for app.py as the workers run it (`worker FD PARENT READY_FD ARGS...`): it says
# it is ready, or not, as its MODE says, and notes its pid in the folder it is given.
# "crash": ready, then exit 1 after 0.3 s; "steady": ready until SIGTERM; "never": exit 3
# before it is ready; "one-steady": the first started is steady, every other one crashes.
FAKE_WORKER = textwrap.dedent(
    """
    import os, sys, time
    _, _, fd, parent, ready, folder, mode = sys.argv
    folder = os.path.abspath(folder)
    if mode == "one-steady":
        try:
            os.close(os.open(os.path.join(folder, "steady"), os.O_CREAT | os.O_EXCL))
            mode = "steady"
        except FileExistsError:
            mode = "crash"
    if mode == "never":
        sys.exit(3)
    with open(os.path.join(folder, f"{os.getpid()}.{mode}"), "w"):
        pass
    os.write(int(ready), b"r")
    os.close(int(ready))
    if mode == "crash":
        time.sleep(0.3)
        sys.exit(1)
    while True:
        time.sleep(1)
    """
)

RUNNER = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from ollama_host.settings import parse_settings
    from ollama_host.workers import run_workers
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    port, script, folder, mode = sys.argv[1:]
    settings = parse_settings(
        ["--workers", "2", "--port", port, "--store", "postgresql://127.0.0.1/none",
         "--grace", "1"], {}
    )
    sys.exit(run_workers(settings, [folder, mode], script=Path(script)))
    """
)


class Runner:
    """The process that runs the workers, over the fake worker script."""

    def __init__(self, folder: Path, mode: str) -> None:
        self.folder = folder
        script = folder / "fake_worker.py"
        script.write_text(FAKE_WORKER)
        self.log = folder / "runner.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", RUNNER, str(free_port()), str(script), str(folder), mode],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def logs(self) -> str:
        return self.log.read_text()

    def pids(self, mode: str) -> list[int]:
        return [int(p.name.split(".")[0]) for p in self.folder.glob(f"*.{mode}")]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@contextlib.contextmanager
def runner(folder: Path, mode: str) -> Iterator[Runner]:
    run = Runner(folder, mode)
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def eventually(done: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent has not reaped it yet.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_the_restart_delay_doubles_up_to_its_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 10)]

    assert delays[:5] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert max(delays) == MAX_BACKOFF


def test_a_worker_that_never_gets_ready_stops_the_start(tmp_path: Path) -> None:
    with runner(tmp_path, "never") as run:
        code = run.proc.wait(30)

    assert code == 3
    assert "worker 0 could not start (exit status 3); stopping" in run.logs()


def test_a_worker_killed_just_after_it_got_ready_is_started_again(tmp_path: Path) -> None:
    # It served: its death within 10 s of its start was taken for "could not start", and
    # the whole service stopped (exit 247 in the fault run).
    with runner(tmp_path, "steady") as run:
        eventually(lambda: len(run.pids("steady")) == 2, "two workers ready")
        first, other = run.pids("steady")
        os.kill(first, signal.SIGKILL)
        eventually(lambda: len(run.pids("steady")) == 3, "the killed worker started again")
        # And again, straight after its restart.
        (second,) = set(run.pids("steady")) - {first, other}
        os.kill(second, signal.SIGKILL)
        eventually(lambda: len(run.pids("steady")) == 4, "started again once more")
        other_alive = alive(other)
        running = run.proc.poll()
        code = run.stop()
        logs = run.logs()

    assert running is None
    assert other_alive  # the other worker was never taken down
    assert code == 0, logs
    assert len(re.findall(r"ended after serving \(exit status -9", logs)) == 2, logs
    assert "could not start" not in logs


def test_a_crash_loop_backs_off_and_leaves_the_healthy_worker_alone(tmp_path: Path) -> None:
    with runner(tmp_path, "one-steady") as run:
        eventually(lambda: len(run.pids("steady")) == 1, "the steady worker ready")
        (steady,) = run.pids("steady")
        # Crashes 1 to 4 are started again after 0, 1, 2 and 4 s.
        eventually(lambda: len(run.pids("crash")) >= 4, "four crashes", timeout=60)
        crashed_at = sorted(p.stat().st_mtime for p in tmp_path.glob("*.crash"))
        steady_alive = alive(steady)
        running = run.proc.poll()
        code = run.stop()
        logs = run.logs()

    assert running is None
    assert steady_alive
    assert code == 0, logs
    assert "starting it again in 1 s" in logs
    assert "starting it again in 2 s" in logs
    # The starts after the second and third crashes waited their 1 and 2 s at least (a
    # lower bound: a busy machine only makes the gaps longer).
    gaps = [b - a for a, b in itertools.pairwise(crashed_at)]
    assert gaps[1] >= 1.0, gaps
    assert gaps[2] >= 2.0, gaps


@pytest.mark.server
@pytest.mark.postgres
def test_a_gateway_worker_killed_9_after_its_start_is_restarted_and_nothing_stops(
    standin: StandIn, tmp_path: Path
) -> None:
    with (
        pg.database() as dsn,
        start_gateway(
            tmp_path / "data",
            "--upstream",
            f"box={standin.url}",
            "--store",
            dsn,
            "--workers",
            "2",
        ) as gateway,
    ):
        eventually(lambda: len(serving(gateway.logs())) == 2, "both workers serve")
        workers = serving(gateway.logs())
        os.kill(workers[0], signal.SIGKILL)
        eventually(lambda: len(serving(gateway.logs())) == 3, "the killed worker serves again")
        with gateway.client() as client:
            asked = [
                client.post("/api/v1/ai/ask_sync", json=ask(), headers=ADMIN_JSON) for _ in range(4)
            ]
        running = gateway.proc.poll()
        gateway.signal(signal.SIGTERM)
        code = gateway.wait(30)
        logs = gateway.logs()

    assert running is None
    assert code == 0, logs
    assert [r.status_code for r in asked] == [200] * 4
    assert re.search(r"worker \d ended after serving \(exit status -9\); starting it again", logs)
    assert "could not start" not in logs
    # The start line names the upstream given, not Ollama's default address.
    assert f"with 2 workers, asking box (ollama) at {standin.url}" in logs
    assert "127.0.0.1:11434" not in logs


def serving(logs: str) -> list[int]:
    """The pids of the workers that said they serve, in order."""
    return [int(pid) for pid in re.findall(r"worker \d serves \(pid (\d+)\)", logs)]
