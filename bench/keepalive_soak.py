"""Many streamed calls through the gateway to an upstream that closes idle keep-alive
connections, counting the calls that fail.

    .venv/bin/python -m bench.keepalive_soak                       # this checkout
    .venv/bin/python -m bench.keepalive_soak --root /work/base     # another checkout

uvicorn closes a keep-alive connection after 5 idle seconds (vLLM and llama-server do the
same). A client that pools connections can pick one just as the server closes it, and a
call sent on it fails, though nothing is wrong with either side. The upstream here is
bench/upstream.py under uvicorn; the gateway (`python app.py` of --root, real uvicorn,
accounting on) asks it; bench/stream_client.py keeps --concurrency streams going, each a
new client connection, until --calls are done, and reports each kind of failure. The
upstream and the client share one core, the gateway gets the other, as in gateway_bench.

The calls come in bursts (--burst, 2,000 by default), each followed by a pause drawn from
--pause (4.95 to 5 s by default): the gateway's pooled connections then wait about as long
as uvicorn keeps them, and the next burst reuses them as uvicorn closes them. Under a
steady load the pool's connections are reused within milliseconds and the race is rare
(the code before the fix failed no call in 100,000 that way, and 16 in 100,000 with these
pauses); a lull near the server's limit is where real traffic meets it. A run of 100,000
calls takes about six minutes, most of it the pauses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.gateway_bench import (
    ADMIN_TOKEN,
    PYTHON,
    Setup,
    cores,
    free_port,
    stop,
    stream_client,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def spawn(argv: list[str], cwd: Path, core: set[int], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, "OLLAMA_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, core),
    )


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_core, gateway_core = cores()
    upstream_port, gateway_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    upstream = spawn(
        [PYTHON, str(BENCH / "upstream.py"), "--port", str(upstream_port), "--uvicorn"],
        ROOT,
        load_core,
        workdir / "upstream.log",
    )
    gateway = None
    try:
        wait_ready(upstream, upstream_url + "/api/version", "the uvicorn upstream")
        argv = [PYTHON, "app.py", "--ollama", upstream_url, "--port", str(gateway_port)]
        argv += ["--data", str(workdir / "data"), "--log-level", "warning"]
        argv += args.gateway_args.split()
        gateway = spawn(argv, args.root, gateway_core, workdir / "gateway.log")
        url = f"http://127.0.0.1:{gateway_port}"
        wait_ready(gateway, url + "/health", "the gateway")
        content = f"hello [[tokens={args.tokens}]]"
        if args.delay:
            content += f" [[delay={args.delay}]]"
        body = json.dumps({"agent": "llama3", "content": content, "project": "soak"})
        calls = ["--streams", str(args.concurrency), "--calls", str(args.calls)]
        calls += ["--burst", str(args.burst), "--pause", args.pause, "--timeout", "60"]
        setup = Setup(args, workdir, load_core, gateway_core)
        result = stream_client(setup, url, "/api/v1/ai/ask_async", body, *calls)
    finally:
        if gateway is not None:
            stop(gateway)
        stop(upstream)
    log = (workdir / "gateway.log").read_text(errors="replace")
    result["gateway_tracebacks"] = log.count("Traceback")
    result["root"] = str(args.root)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose gateway runs")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=8, help="tokens per streamed answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--burst", type=int, default=2000, help="calls between two pauses")
    parser.add_argument(
        "--pause", default="4.95,5.0", help="LOW,HIGH: seconds of each pause, drawn at random"
    )
    parser.add_argument(
        "--gateway-args", default="", help="more flags for the gateway, e.g. '--upstream-idle 10'"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="keepalive-soak-"))
    result = soak(args, workdir)
    print(json.dumps(result, indent=2))
    failed = result["failed"] or result["completed"] != args.calls
    print(
        f"{args.root}: {result['completed']:,} of {args.calls:,} calls completed, "
        f"{result['failed']:,} failed, at c={args.concurrency}, in {result['seconds']:.0f} s",
        file=sys.stderr,
    )
    if args.keep or failed:
        print(f"logs in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
