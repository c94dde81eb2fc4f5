"""What the gateway adds between a client and Ollama, measured in one run.

    .venv/bin/python bench/gateway_bench.py            # the full run, a few minutes
    .venv/bin/python bench/gateway_bench.py --quick    # a smoke run, well under a minute

Needs the `speed` extra (uvloop, httptools: scripts/setup installs it) and `wrk`
(`apt-get install wrk`). Three kinds of process, each pinned to a core when the machine has
two or more: the upstream (bench/upstream.py, a lean Ollama stand-in) and the load generators
(wrk, bench/stream_client.py) share one core, the gateway (`python app.py`, real uvicorn,
accounting on) gets the other. Every figure is also taken with the client talking to the
upstream directly: that is the baseline, and "added" means gateway minus baseline.

Sections: non-streamed asks at several concurrencies; routing (one upstream against three,
at c=64); the fronts (the seed's, Ollama's and OpenAI's, each asked whole and streamed at c=1
and c=64, against the upstream direct); streamed asks (time to first token, then N concurrent
streams at 20 tokens/s); cancellation under load. Each section checks its counts: nothing
dropped, nothing out of order, every call recorded with the right status.
A failed count makes the exit status 1; speed targets are reported, never enforced, since
the figures depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cores() -> tuple[set[int], set[int]]:
    """(load side, gateway side): one core each when there are two, all for both otherwise."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return set(available), set(available)
    return {available[0]}, {available[1]}


# The gateway's admin surface is closed; the benchmark reads the records with this token.
ADMIN_TOKEN = "bench-" + secrets.token_hex(8)


def spawn(argv: list[str], core: set[int], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "OLLAMA_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, core),
    )


def get(url: str, timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


def post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def wait_ready(proc: subprocess.Popen[bytes], url: str, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Sampler:
    """CPU seconds and peak RSS of one process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._running = False
        self._thread: threading.Thread | None = None

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self.peak_rss = self.rss()
        self._running = True

        def loop() -> None:
            while self._running:
                self.peak_rss = max(self.peak_rss, self.rss())
                time.sleep(0.1)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._running = False
            self._thread.join()


@dataclass
class Setup:
    args: argparse.Namespace
    workdir: Path
    load_core: set[int]
    gateway_core: set[int]
    upstream_url: str = ""
    upstream: subprocess.Popen[bytes] | None = None
    checks: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.checks.append(message)
        print(f"  CHECK FAILED: {message}", flush=True)


@contextlib.contextmanager
def gateway(
    setup: Setup, name: str, upstreams: list[str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fresh gateway (new data folder) for one measurement, stopped afterwards. It asks
    the bench upstream, or the `--upstream` specs given."""
    port = free_port()
    data = setup.workdir / f"data-{name}"
    entry = ["app.py"] if setup.args.store == "tinydb" else ["bench/line_store.py"]
    asking = ["--ollama", setup.upstream_url]
    if upstreams:
        asking = [arg for spec in upstreams for arg in ("--upstream", spec)]
    argv = [PYTHON, *entry, *asking, "--port", str(port)]
    argv += ["--data", str(data), "--log-level", setup.args.log_level]
    # The default connection cap (1024 at most) is below the largest stream counts here.
    args = setup.args
    most = max([*args.streams, *args.concurrency, args.cancel, args.ttft])
    argv += ["--max-connections", str(most + 64)]
    proc = spawn(argv, setup.gateway_core, setup.workdir / f"gateway-{name}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/health", "the gateway")
        yield url, proc
    finally:
        stop(proc)
        log = (setup.workdir / f"gateway-{name}.log").read_text(errors="replace")
        if "Traceback" in log:
            setup.fail(f"the gateway logged a traceback in {name}; see {setup.workdir}")


def count_records(url: str, project: str, status: str | None = None) -> int:
    """How many usage records the gateway holds for this project, by offset probing."""
    suffix = f"&status={status}" if status else ""

    def at(offset: int) -> bool:
        page = get(
            f"{url}/api/v1/admin/dashboard?project={project}{suffix}&offset={offset}&limit=1"
        )
        return bool(page)

    if not at(0):
        return 0
    low, high = 0, 1
    while at(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if at(middle):
            low = middle
        else:
            high = middle
    return high


def wait_records(url: str, project: str, status: str | None, want: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        found = count_records(url, project, status)
        if found >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# -- non-streamed asks -------------------------------------------------------------------------

_WRK_LUA = """wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
%s"""


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(
    setup: Setup, url: str, body: str, connections: int, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    script = setup.workdir / f"body-{abs(hash((body, extra)))}.lua"
    script.write_text(_WRK_LUA % (body, extra))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{setup.args.seconds}s", "--latency"]
    argv += ["--timeout", "10s", "-s", str(script), url]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, setup.load_core),
    )
    return parse_wrk(proc.stdout, url)


def parse_wrk(out: str, url: str = "") -> dict[str, Any]:
    """req/s, p50 and p99 (ms), counts and errors from wrk --latency's report."""

    def percentile(p: int) -> float:
        # Anchored to the distribution's own lines: the "+/- Stdev" columns end in "%"
        # too, and one ending in 50% or 99% (say 84.50%) was once read as the percentile.
        found = re.search(rf"^\s+{p}%\s+([\d.]+(?:us|ms|s|m))\s*$", out, re.M)
        if found is None:
            raise RuntimeError(f"wrk printed no {p}th percentile for {url}:\n{out}")
        return _ms(found.group(1))

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec for {url}:\n{out}")
    found = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)),
        "p50": percentile(50),
        "p99": percentile(99),
        "requests": int(found.group(1)) if found else 0,
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def non_streamed(setup: Setup) -> list[str]:
    lines = ["## Non-streamed asks (POST /api/v1/ai/ask_sync), accounting on", ""]
    lines += ["| concurrency | direct req/s | direct p50 | direct p99 "]
    lines[-1] += "| gateway req/s | gateway p50 | gateway p99 | records |"
    lines += ["|---|---|---|---|---|---|---|---|"]
    direct_body = '{"model":"llama3","messages":[{"role":"user","content":"hello"}],"stream":false}'
    added_c1 = None
    for c in setup.args.concurrency:
        project = f"sync-c{c}"
        direct = wrk(setup, setup.upstream_url + "/api/chat", direct_body, c)
        body = _ask("hello", project)
        with gateway(setup, project) as (url, _proc):
            via = wrk(setup, url + "/api/v1/ai/ask_sync", body, c)
            # wrk stops mid-flight: up to c requests may end as cancelled, never fewer records.
            recorded = wait_records(url, project, None, via["requests"], 30)
            ok = count_records(url, project, "ok")
        if via["non2xx"] or via["socket_errors"]:
            setup.fail(f"c={c}: {via['non2xx']} non-2xx, socket errors {via['socket_errors']}")
        if not via["requests"] <= recorded <= via["requests"] + c or ok < via["requests"]:
            setup.fail(f"c={c}: {via['requests']} answers but {recorded} records ({ok} ok)")
        if c == 1:
            added_c1 = via["p50"] - direct["p50"]
        lines.append(
            f"| {c} | {direct['rps']:,.0f} | {direct['p50']:.2f} ms | {direct['p99']:.2f} ms "
            f"| {via['rps']:,.0f} | {via['p50']:.2f} ms | {via['p99']:.2f} ms "
            f"| {recorded:,} ({ok:,} ok) |"
        )
        print(lines[-1], flush=True)
    if added_c1 is not None:
        lines += ["", f"Added p50 at c=1: **{added_c1:.3f} ms**"]
    return lines


# -- routing ----------------------------------------------------------------------------------


def routing(setup: Setup) -> list[str]:
    """Non-streamed asks at one concurrency through a gateway with one upstream, then with
    three, alternately, in the same run: what choosing among several costs. Each gateway gets
    a fresh data folder."""
    c = setup.args.routing_concurrency
    rounds = setup.args.routing_rounds
    lines = [f"## Routing: one upstream against three, non-streamed asks at c={c}", ""]
    lines += [
        "| round | upstreams | req/s | p50 | p99 | gateway CPU per ask | records |",
        "|---|---|---|---|---|---|---|",
    ]
    # One upstream process on three loopback addresses: three upstreams to the gateway (three
    # members, transports and health checks), while the load side does exactly the same work
    # for both measurements. Three processes would share the load core with wrk and slow the
    # load generator itself, which is not what this measures.
    port = free_port()
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    argv = [PYTHON, str(BENCH / "upstream.py"), "--host", ",".join(hosts), "--port", str(port)]
    upstream = spawn(argv, setup.load_core, setup.workdir / "upstream-routing.log")
    urls = [f"http://{host}:{port}" for host in hosts]
    try:
        for url in urls:
            wait_ready(upstream, url + "/api/version", "the routing bench upstream")
        results: dict[int, list[float]] = {1: [], 3: []}
        cpu_per_ask: dict[int, list[float]] = {1: [], 3: []}
        for round_ in range(1, rounds + 1):
            # One then three, three then one, ...: neither always runs on a warmer machine.
            for count in (1, 3) if round_ % 2 else (3, 1):
                specs = [f"u{i}={url}" for i, url in enumerate(urls[:count], 1)]
                project = f"route-{count}-{round_}"
                with gateway(setup, project, specs) as (url, proc):
                    sampler = Sampler(proc.pid)
                    cpu0 = sampler.cpu()
                    via = wrk(setup, url + "/api/v1/ai/ask_sync", _ask("hello", project), c)
                    cpu = (sampler.cpu() - cpu0) / max(1, via["requests"])
                    recorded = wait_records(url, project, None, via["requests"], 30)
                if via["non2xx"] or via["socket_errors"] or not via["requests"]:
                    setup.fail(
                        f"routing {count}: {via['requests']} answers, {via['non2xx']} non-2xx, "
                        f"socket errors {via['socket_errors']}"
                    )
                if not via["requests"] <= recorded <= via["requests"] + c:
                    setup.fail(f"routing {count}: {via['requests']} answers, {recorded} records")
                results[count].append(via["rps"])
                cpu_per_ask[count].append(cpu)
                lines.append(
                    f"| {round_} | {count} | {via['rps']:,.0f} | {via['p50']:.2f} ms "
                    f"| {via['p99']:.2f} ms | {cpu * 1e6:,.0f} µs | {recorded:,} |"
                )
                print(lines[-1], flush=True)
    finally:
        stop(upstream)
    one, three = statistics.median(results[1]), statistics.median(results[3])
    loss = 1 - three / one
    cpu_one, cpu_three = (statistics.median(cpu_per_ask[n]) for n in (1, 3))
    lines += [
        "",
        f"Median req/s: one upstream {one:,.0f}, three {three:,.0f}: a loss of **{loss:.1%}** "
        f"(target at most 5%: {'met' if loss <= 0.05 else 'MISSED'}). Median gateway CPU per "
        f"ask: {cpu_one * 1e6:,.0f} µs with one, {cpu_three * 1e6:,.0f} µs with three "
        f"({cpu_three / cpu_one - 1:+.1%}); the CPU figure moves less with the machine's "
        "other load than req/s does.",
    ]
    print(lines[-1], flush=True)
    return lines


# -- the fronts -------------------------------------------------------------------------------

_HELLO = [{"role": "user", "content": "hello"}]
# front -> (path, body of a whole ask, body of a streamed ask); the project comes as a header
# on the new fronts, as their clients send it, and in the body on the seed's.
FRONTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "seed": (
        "/api/v1/ai/ask_sync",
        {"agent": "llama3", "content": "hello"},
        {"agent": "llama3", "content": "hello"},
    ),
    "ollama": (
        "/api/chat",
        {"model": "llama3", "messages": _HELLO, "stream": False},
        {"model": "llama3", "messages": _HELLO},
    ),
    "openai": (
        "/v1/chat/completions",
        {"model": "llama3", "messages": _HELLO},
        {"model": "llama3", "messages": _HELLO, "stream": True},
    ),
}


def fronts(setup: Setup) -> list[str]:
    """Each front against the seed's in the same run: what a call costs the gateway on each.

    One gateway per kind of ask and concurrency serves every front, in rounds that take the
    fronts in turn, so that the machine's other load falls on all of them alike; each figure
    is the median over the rounds. Cost per call is the p50 added over the upstream direct at
    c=1, and the gateway's time per call (1 / req/s: its core is the bottleneck) at c=64. A
    streamed ask is 8 tokens, read to the end by wrk like any response.
    """
    rounds = setup.args.rounds
    lines = [
        "## The fronts: the seed's, Ollama's and OpenAI's (8-token answers), accounting on",
        "",
        f"Median of {rounds} rounds; one gateway per row group serves the three fronts in turn.",
        "",
        "| ask | c | direct req/s | direct p50 | front | req/s | p50 | p99 | cost per call "
        "| vs seed | records |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: list[str] = []
    for streamed in (False, True):
        kind = "streamed" if streamed else "whole"
        direct_body = {"model": "llama3", "messages": _HELLO, "stream": streamed}
        for c in setup.args.front_concurrency:
            results: dict[str, list[dict[str, Any]]] = {front: [] for front in FRONTS}
            directs: list[dict[str, Any]] = []
            counted: dict[str, tuple[int, int]] = {}
            with gateway(setup, f"fronts-{kind}-c{c}") as (url, _proc):
                for n in range(rounds):
                    directs.append(
                        wrk(setup, setup.upstream_url + "/api/chat", json.dumps(direct_body), c)
                    )
                    order = list(FRONTS)
                    for front in order[n % 3 :] + order[: n % 3]:
                        path, whole, stream = FRONTS[front]
                        project = f"{front}-{kind}-c{c}"
                        body = dict(stream if streamed else whole)
                        headers = {}
                        if front == "seed":
                            body["project"] = project
                            path = "/api/v1/ai/ask_async" if streamed else path
                        else:
                            headers["X-Project"] = project
                        results[front].append(wrk(setup, url + path, json.dumps(body), c, headers))
                for front in FRONTS:
                    project = f"{front}-{kind}-c{c}"
                    answered = sum(r["requests"] for r in results[front])
                    recorded = wait_records(url, project, None, answered, 30)
                    ok = count_records(url, project, "ok")
                    counted[front] = (recorded, ok)
                    bad = [r for r in results[front] if r["non2xx"] or r["socket_errors"]]
                    if bad:
                        setup.fail(f"{project}: non-2xx or socket errors in {len(bad)} rounds")
                    # wrk stops mid-flight: up to c calls a round may end as cancelled.
                    if not answered <= recorded <= answered + c * rounds or ok < answered:
                        setup.fail(f"{project}: {answered} answers, {recorded} records")
            direct = {k: statistics.median(d[k] for d in directs) for k in ("rps", "p50")}
            costs: dict[str, float] = {}
            for front in FRONTS:
                via = {
                    k: statistics.median(r[k] for r in results[front])
                    for k in ("rps", "p50", "p99")
                }
                # c=1: what the gateway adds to one call; c=64: its time per call, saturated.
                cost = via["p50"] - direct["p50"] if c == 1 else 1000 / via["rps"]
                costs[front] = cost
                ratio = cost / costs["seed"] if costs["seed"] > 0 else float("nan")
                recorded, ok = counted[front]
                lines.append(
                    f"| {kind} | {c} | {direct['rps']:,.0f} | {direct['p50']:.2f} ms | {front} "
                    f"| {via['rps']:,.0f} | {via['p50']:.2f} ms | {via['p99']:.2f} ms "
                    f"| {cost:.3f} ms | {ratio:.2f}× | {recorded:,} ({ok:,} ok) |"
                )
                print(lines[-1], flush=True)
            for front in ("ollama", "openai"):
                ratio = costs[front] / costs["seed"] if costs["seed"] > 0 else float("nan")
                verdict = "met" if ratio <= 1.10 else "MISSED"
                summary.append(
                    f"- {kind}, c={c}: {front} costs {ratio:.2f}× the seed's per call "
                    f"(target at most 1.10×: {verdict})"
                )
    lines += ["", *summary]
    print("\n".join(summary), flush=True)
    return lines


# -- streamed asks ----------------------------------------------------------------------------


def stream_client(setup: Setup, url: str, path: str, body: str, *extra: str) -> dict[str, Any]:
    port = url.rsplit(":", 1)[1]
    argv = [PYTHON, str(BENCH / "stream_client.py"), "--port", port, "--path", path]
    argv += ["--body", body, *extra]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        preexec_fn=lambda: os.sched_setaffinity(0, setup.load_core),
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _chat(content: str) -> str:
    return json.dumps({"model": "llama3", "messages": [{"role": "user", "content": content}]})


def _ask(content: str, project: str) -> str:
    return json.dumps({"agent": "llama3", "content": content, "project": project})


def streamed(setup: Setup) -> list[str]:
    args = setup.args
    lines = ["## Streamed asks (POST /api/v1/ai/ask_async, SSE), accounting on", ""]
    one = "hello [[tokens=1]]"
    direct = stream_client(
        setup, setup.upstream_url, "/api/chat", _chat(one), "--sequential", str(args.ttft)
    )
    with gateway(setup, "ttft") as (url, _proc):
        via = stream_client(
            setup, url, "/api/v1/ai/ask_async", _ask(one, "ttft"), "--sequential", str(args.ttft)
        )
    added = via["ttft_p50_ms"] - direct["ttft_p50_ms"]
    lines.append(
        f"Time to first token, p50 of {args.ttft} one at a time: direct "
        f"{direct['ttft_p50_ms']:.2f} ms, through the gateway {via['ttft_p50_ms']:.2f} ms, "
        f"added **{added:.2f} ms**"
    )
    print(lines[-1], flush=True)
    lines += [
        "",
        "Concurrent streams at 20 tokens/s each. The streams open over the ramp time, then each "
        f"streams for {args.stream_seconds:g} s more. Token latency is the time from the "
        "upstream writing a token's line to the client reading its event; *steady* counts only "
        "tokens read once every stream had its first token (no stream still being opened), "
        "*all* counts every token, the ramp included; *steady tokens* is the share of tokens "
        "in the steady window (small when the gateway fell behind opening streams). *Upstream "
        "late* is how far behind its 50 ms schedule the upstream itself sent the lines (steady "
        "window): a late upstream sends the overdue lines together, in a burst. CPU is the "
        "gateway's over the whole run, stream setup included; *run* is the client's wall time.",
        "",
        "| streams | ramp | direct p50 / p99 (steady) | gateway p50 / p99 (steady) "
        "| added p99 (steady) | gateway p99 (all) | gateway gap p99 "
        "| upstream late p99 (direct / gateway run) "
        "| gateway CPU s / 1,000 tokens | gateway peak RSS | steady tokens | run | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs: dict[int, list[float]] = {}
    for n in args.streams:
        for run in range(args.repeat):
            row, added_p99 = _streams_once(setup, n, run)
            runs.setdefault(n, []).append(added_p99)
            lines.append(row)
            print(row, flush=True)
    if args.repeat > 1:
        lines.append("")
        for n, values in runs.items():
            values.sort()
            lines.append(
                f"- {n:,} streams, added p99 (steady) over {len(values)} runs: median "
                f"**{statistics.median(values):.2f} ms**, "
                f"from {values[0]:.2f} to {values[-1]:.2f} ms"
            )
            print(lines[-1], flush=True)
    return lines


def _late(result: dict[str, Any]) -> str:
    late = result.get("upstream_late_p99_ms")
    return "n/a" if late is None else f"{late:.1f}"


def _streams_once(setup: Setup, n: int, run: int) -> tuple[str, float]:
    """One measurement of n concurrent streams: its table row, and the added p99."""
    args = setup.args
    project = f"streams-{n}" if run == 0 else f"streams-{n}-{run}"
    ramp_seconds = args.ramp if args.ramp is not None else max(1.0, n / 500)
    tokens = round(20 * (ramp_seconds + args.stream_seconds))
    content = f"hello [[tokens={tokens}]] [[delay=0.05]]"
    ramp = ["--streams", str(n), "--ramp", str(ramp_seconds), "--interval", "0.05"]
    direct = stream_client(setup, setup.upstream_url, "/api/chat", _chat(content), *ramp)
    with gateway(setup, project) as (url, proc):
        sampler = Sampler(proc.pid)
        cpu0 = sampler.cpu()
        with sampler.watching():
            via = stream_client(setup, url, "/api/v1/ai/ask_async", _ask(content, project), *ramp)
        cpu = sampler.cpu() - cpu0
        recorded = wait_records(url, project, "ok", n, 30)
    problems = []
    for name, result in (("direct", direct), ("gateway", via)):
        if result["completed"] != n or result["failed"]:
            problems.append(f"{name}: {result['completed']}/{n} completed")
        if result["tokens"] != n * tokens:
            problems.append(f"{name}: {result['tokens']}/{n * tokens} tokens")
        if result["disorder"]:
            problems.append(f"{name}: {result['disorder']} out of order")
    if recorded != n:
        problems.append(f"{recorded}/{n} records ok")
    for problem in problems:
        setup.fail(f"{n} streams: {problem}")
    per_k = cpu / max(1, via["tokens"]) * 1000
    added_p99: float = via["steady_p99_ms"] - direct["steady_p99_ms"]
    row = (
        f"| {n:,} | {ramp_seconds:g} s "
        f"| {direct['steady_p50_ms']:.2f} / {direct['steady_p99_ms']:.2f} ms "
        f"| {via['steady_p50_ms']:.2f} / {via['steady_p99_ms']:.2f} ms "
        f"| **{added_p99:.2f} ms** "
        f"| {via['latency_p99_ms']:.2f} ms | {via['gap_p99_ms']:.1f} ms "
        f"| {_late(direct)} / {_late(via)} ms "
        f"| {per_k:.3f} "
        f"| {sampler.peak_rss / 2**20:.0f} MB "
        f"| {via['steady_tokens'] / max(1, via['tokens']):.0%} | {via['seconds']:.1f} s "
        f"| {'ok' if not problems else 'FAILED'} |"
    )
    return row, added_p99


def cancellation(setup: Setup) -> list[str]:
    n = setup.args.cancel
    project = "cancel"
    content = "hello [[tokens=100000]] [[delay=0.05]]"
    post(setup.upstream_url + "/_standin/reset")
    with gateway(setup, project) as (url, _proc):
        result = stream_client(
            setup,
            url,
            "/api/v1/ai/ask_async",
            _ask(content, project),
            "--streams",
            str(n),
            "--ramp",
            str(setup.args.ramp if setup.args.ramp is not None else 1.0),
            "--leave-after",
            "3",
        )
        left_at = result["left_at"]
        deadline = time.monotonic() + 10
        while True:
            calls = get(setup.upstream_url + "/_standin/calls")
            closed = [c["disconnected_at"] for c in calls if c["disconnected_at"]]
            if len(closed) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        cancelled = wait_records(url, project, "cancelled", n, 30)
        total = count_records(url, project)
    slowest = max(closed) - left_at if closed else float("nan")
    if len(calls) != n or len(closed) != n:
        setup.fail(f"cancellation: upstream saw {len(calls)} calls, {len(closed)} closed")
    if cancelled != n or total != n:
        setup.fail(f"cancellation: {cancelled} cancelled of {total} records, want {n}")
    line = (
        f"## Cancellation under load\n\n{n} streams, each client hangs up after 3 tokens: "
        f"{len(closed)}/{n} upstream connections closed, the last {slowest * 1000:.0f} ms after "
        f"the clients left (target 1 s: {'met' if slowest <= 1.0 else 'MISSED'}); "
        f"{cancelled}/{total} records say `cancelled`."
    )
    print(line, flush=True)
    return [line]


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    parser.add_argument(
        "--store",
        choices=["tinydb", "lines"],
        default="tinydb",
        help="tinydb: the shipped store (python app.py); lines: bench/line_store.py, "
        "an append-only stand-in for the journal store, to see the request path alone",
    )
    parser.add_argument("--log-level", default="info", help="the gateway's (default info)")
    parser.add_argument(
        "--only", choices=["sync", "routing", "fronts", "streams", "cancel"], action="append"
    )
    parser.add_argument(
        "--routing-concurrency", type=int, default=64, help="clients for the routing section"
    )
    parser.add_argument(
        "--routing-rounds", type=int, help="one-then-three measurements (default 3, quick 1)"
    )
    parser.add_argument("--seconds", type=int, help="wrk seconds per point (default 5)")
    parser.add_argument("--concurrency", type=int, nargs="+")
    parser.add_argument(
        "--front-concurrency", type=int, nargs="+", help="for the fronts (default 1 64)"
    )
    parser.add_argument("--rounds", type=int, help="rounds of the fronts (default 5)")
    parser.add_argument("--streams", type=int, nargs="+")
    parser.add_argument("--stream-seconds", type=float, help="streaming time after the ramp")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each stream count this many times (a row each, then the median)",
    )
    parser.add_argument("--cancel", type=int)
    parser.add_argument("--ttft", type=int, help="sequential streams for TTFT")
    parser.add_argument(
        "--ramp", type=float, help="seconds to open the streams over (default N/500, at least 1)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    args = parser.parse_args(argv)
    defaults = (
        {"seconds": 1, "concurrency": [1, 16], "streams": [20], "stream_seconds": 0.5}
        | {"front_concurrency": [1, 64], "rounds": 1}
        | {"cancel": 20, "ttft": 20, "ramp": 0.2, "routing_rounds": 1}
        if args.quick
        else {"seconds": 5, "concurrency": [1, 16, 64, 256], "streams": [100, 500, 1000, 2000]}
        | {"front_concurrency": [1, 64], "rounds": 5}
        | {"stream_seconds": 5.0, "cancel": 500, "ttft": 200, "routing_rounds": 3}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    needs_wrk = not args.only or bool({"sync", "routing", "fronts"} & set(args.only))
    if shutil.which("wrk") is None and needs_wrk:
        print("wrk is not installed: apt-get install wrk (or pass --only streams)", file=sys.stderr)
        return 2
    # Thousands of streams hold two sockets each in the gateway.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    load_core, gateway_core = cores()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    setup = Setup(args, workdir, load_core, gateway_core)
    port = free_port()
    setup.upstream_url = f"http://127.0.0.1:{port}"
    upstream = spawn(
        [PYTHON, str(BENCH / "upstream.py"), "--port", str(port)],
        load_core,
        workdir / "upstream.log",
    )
    sections: list[str] = []
    try:
        wait_ready(upstream, setup.upstream_url + "/api/version", "the bench upstream")
        load = os.getloadavg()
        header = (
            f"# Gateway benchmark ({'quick' if args.quick else 'full'}, store: {args.store})\n\n"
            f"{os.cpu_count()} CPUs; upstream and load generators on core(s) "
            f"{sorted(load_core)}, gateway on {sorted(gateway_core)}; load average before "
            f"the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        print(header, flush=True)
        sections.append(header)
        only = args.only or ["sync", "routing", "fronts", "streams", "cancel"]
        if "sync" in only:
            sections.append("\n".join(non_streamed(setup)))
        if "routing" in only:
            sections.append("\n".join(routing(setup)))
        if "fronts" in only:
            sections.append("\n".join(fronts(setup)))
        if "streams" in only:
            sections.append("\n".join(streamed(setup)))
        if "cancel" in only:
            sections.append("\n".join(cancellation(setup)))
        load = os.getloadavg()
        sections.append(f"Load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        stop(upstream)
        if not args.keep and not setup.checks:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n\n".join(sections))
    if setup.checks:
        print(f"\n{len(setup.checks)} checks failed; logs kept in {workdir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
