"""Slow and idle clients against a real gateway: what they hold, and for how long.

Starts `python app.py` from a checkout (this one unless --root) with no Ollama behind it,
then opens, all at once:

- slow-body: POSTs whose headers arrive whole, then the body at one byte a second;
- slow-header: requests whose headers arrive at one byte a second, never finished;
- idle: connections that never send anything;
- kept: connections that make one request, read the answer, then stay open and silent.

It samples the gateway's open files, how many connections of each kind the gateway still
holds, and how long `/health` takes, at the given times; then prints a Markdown table.

.venv/bin/python bench/slow_clients.py                     # this checkout, default settings
.venv/bin/python bench/slow_clients.py --root /tmp/old     # another checkout (e.g. before a fix)
.venv/bin/python bench/slow_clients.py --at 5 15 30 52 -- --header-timeout 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("slow-body", "slow-header", "kept", "idle")


@dataclass
class Tally:
    opened: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    held: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    never_connected: int = 0
    answered_408: int = 0
    answered_503: int = 0
    closed_unanswered: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def health_seconds(port: int) -> float | None:
    """Seconds for a whole GET /health on a new connection; None if it failed or took > 10 s."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return None
    return time.perf_counter() - start if answer.startswith(b"HTTP/1.1 ") else None


async def client(kind: str, port: int, tally: Tally, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        tally.never_connected += 1
        return
    tally.opened[kind] += 1
    tally.held[kind] += 1
    answer = b""

    async def dribble(head: bytes, drip: bytes) -> None:
        writer.write(head)
        for byte in drip:
            await asyncio.sleep(1)
            writer.write(bytes([byte]))

    sender: asyncio.Task[None] | None = None
    try:
        if kind == "slow-body":
            head = (
                b"POST /api/v1/ai/ask_sync HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            sender = asyncio.create_task(dribble(head, b"x" * 1000))
        elif kind == "slow-header":
            sender = asyncio.create_task(
                dribble(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: " + b"a" * 1000)
            )
        elif kind == "kept":
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        # Whatever the gateway sends, until it closes the connection (or the run ends).
        reading = asyncio.create_task(reader.read())
        stopping = asyncio.create_task(stop.wait())
        while True:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                reading.cancel()
                return
            chunk = reading.result()
            if not chunk:
                break
            answer += chunk
            reading = asyncio.create_task(reader.read(65536))
    except OSError:
        pass  # reset by the gateway: closed all the same
    finally:
        if sender is not None:
            sender.cancel()
        writer.close()
    tally.held[kind] -= 1
    if kind == "kept":
        answer = answer.partition(b"\r\n\r\n")[2]  # past the one answer it asked for
    if b"HTTP/1.1 408" in answer:
        tally.answered_408 += 1
    elif b"HTTP/1.1 503" in answer:
        tally.answered_503 += 1
    elif not answer:
        tally.closed_unanswered += 1


async def run(args: argparse.Namespace, port: int, pid: int) -> list[dict[str, object]]:
    tally = Tally()
    stop = asyncio.Event()
    counts = {
        "slow-body": args.slow_body,
        "slow-header": args.slow_header,
        "kept": args.kept,
        "idle": args.idle,
    }
    rows: list[dict[str, object]] = [
        {"t": 0.0, "files": open_files(pid), "health": await health_seconds(port)}
    ]
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for kind, n in counts.items():
        for _ in range(n):
            tasks.append(asyncio.create_task(client(kind, port, tally, stop)))
            if len(tasks) % 100 == 0:
                await asyncio.sleep(0.01)  # stay under the listen backlog
    for at in args.at:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        rows.append(
            {
                "t": at,
                "files": open_files(pid),
                "health": await health_seconds(port),
                **{kind: tally.held[kind] for kind in KINDS},
            }
        )
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    rows.append(
        {
            "opened": dict(tally.opened),
            "408": tally.answered_408,
            "503": tally.answered_503,
            "closed unanswered": tally.closed_unanswered,
            "never connected": tally.never_connected,
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose app.py to run")
    parser.add_argument("--slow-body", type=int, default=200)
    parser.add_argument("--slow-header", type=int, default=200)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--kept", type=int, default=200)
    parser.add_argument("--at", type=float, nargs="+", default=[5, 15, 30, 52])
    parser.add_argument("gateway_args", nargs="*", help="more app.py flags, after --")
    args = parser.parse_args(argv)

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        argv_gw = [sys.executable, str(args.root / "app.py"), "--port", str(port)]
        argv_gw += ["--data", f"{tmp}/data", "--ollama", "127.0.0.1:9", *args.gateway_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")}
        env["OLLAMA_GATEWAY_ADMIN_TOKEN"] = "bench-slow-clients"
        with open(f"{tmp}/gateway.log", "w+") as log:
            proc = subprocess.Popen(argv_gw, cwd=args.root, stdout=log, stderr=log, env=env)
            try:
                deadline = time.monotonic() + 20
                while asyncio.run(health_seconds(port)) is None:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        print(log.read(), file=sys.stderr)
                        return 1
                    time.sleep(0.1)
                rows = asyncio.run(run(args, port, proc.pid))
            finally:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
                proc.kill()
            log.seek(0)
            lines = [line for line in log.read().splitlines() if "connection" in line.lower()]

    kinds = " | ".join(f"{kind} held" for kind in KINDS)
    print(f"gateway: {args.root / 'app.py'} {' '.join(args.gateway_args)}")
    print(f"\n| seconds | open files | /health s | {kinds} |")
    print("|---" * (3 + len(KINDS)) + "|")
    for row in rows[:-1]:
        health = row["health"]
        shown = "failed" if health is None else f"{health:.3f}"
        held = " | ".join(str(row.get(kind, "")) for kind in KINDS)
        print(f"| {row['t']:g} | {row['files']} | {shown} | {held} |")
    print(f"\n{rows[-1]}")
    for line in lines[:5]:
        print("log:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
