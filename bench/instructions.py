"""Instructions the gateway executes per call, counted by valgrind: a figure the machine's load
cannot move.

    .venv/bin/python -m bench.instructions                 # this checkout
    .venv/bin/python -m bench.instructions --root ../base  # another checkout, same bench

Wall-clock figures (bench/gateway_bench.py) move with whatever else the machine runs; this
counts what the gateway process itself executes (every thread: the event loop, the store's
writer, the log thread), so two versions can be compared on a busy machine, one after the
other. The gateway runs under `valgrind --tool=callgrind --instr-atstart=no`; after a warm-up,
counting is switched on for exactly N calls sent one at a time on one keep-alive connection,
then off. Reported: instructions per non-streamed ask (the seed's ask_sync), and per streamed
ask of T tokens, from which the cost of a relayed token follows; and per call of Ollama's
front (/api/chat whole, and streamed), whose framing differs.

Needs valgrind (Debian's package) and the bench upstream (bench/upstream.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "instructions-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_up(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.2)


class Client:
    """One keep-alive HTTP/1.1 connection, one request at a time, bodies read whole."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buffer = b""

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("connection closed")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("connection closed")
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
        )
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status = int(head.split(" ", 2)[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
        }
        if "content-length" in headers:
            return status, self._read(int(headers["content-length"]))
        body_parts: list[bytes] = []
        while True:  # chunked
            size = int(self._read_until(b"\r\n"), 16)
            if size == 0:
                self._read_until(b"\r\n")
                return status, b"".join(body_parts)
            body_parts.append(self._read(size))
            self._read(2)


def total_instructions(out_file: Path) -> int:
    text = out_file.read_text(errors="replace")
    match = re.search(r"^totals:\s+(\d+)", text, re.M)
    if match is None:
        raise RuntimeError(f"no totals in {out_file}")
    return int(match[1])


def measure(
    root: Path,
    calls: int,
    tokens: int,
    spacing: float,
    keep: Path | None = None,
    cap: int | None = None,
) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="instructions-"))
    up_port, gw_port = free_port(), free_port()
    python = str(ROOT / ".venv" / "bin" / "python")
    upstream = subprocess.Popen(
        [python, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {**os.environ, "OLLAMA_GATEWAY_ADMIN_TOKEN": TOKEN}
    out = work / "callgrind.out"
    gateway = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            python,
            "app.py",
            "--port",
            str(gw_port),
            # With a cap, the upstream is configured as one with a cap, so each call takes
            # and gives back a slot (the calls, one at a time, never wait for one).
            *(
                ["--ollama", f"127.0.0.1:{up_port}"]
                if cap is None
                else ["--upstream", f"bench=http://127.0.0.1:{up_port},cap={cap}"]
            ),
            "--data",
            str(work / "data"),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "valgrind.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    results: dict[str, float] = {}

    def control(*args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(gateway.pid)], check=True, capture_output=True
        )

    try:
        wait_up(f"http://127.0.0.1:{gw_port}/health", 120)
        client = Client(gw_port)
        sync = b'{"agent": "llama3", "content": "hi [[tokens=8]]", "project": "bench"}'
        short = b'{"agent": "llama3", "content": "hi [[tokens=1]]", "project": "bench"}'
        # Spaced tokens: each arrives in a read of its own, as from a model (a burst would be
        # relayed in fewer, larger writes, and the per-token figure would depend on timing).
        stream = (
            b'{"agent": "llama3", "content": "hi [[tokens=%d]] [[delay=%g]]", "project": "bench"}'
            % (tokens, spacing)
        )
        # Ollama's front: its own framing (NDJSON, the last line's metrics) on the same call.
        chat = (
            b'{"model": "llama3", "messages": [{"role": "user", "content": "hi [[tokens=%d]]"}], '
            b'"stream": %s}'
        )
        chat_whole, chat_streamed = chat % (8, b"false"), chat % (1, b"true")
        for _ in range(30):  # warm-up: caches, first-call paths
            client.post("/api/v1/ai/ask_sync", sync)
            client.post("/api/v1/ai/ask_async", short)
            client.post("/api/chat", chat_whole)
            client.post("/api/chat", chat_streamed)
        for name, path, body, n in (
            ("ask_sync", "/api/v1/ai/ask_sync", sync, calls),
            ("ask_async_1", "/api/v1/ai/ask_async", short, calls),
            ("ask_async", "/api/v1/ai/ask_async", stream, max(10, calls // 10)),
            ("chat_whole", "/api/chat", chat_whole, calls),
            ("chat_streamed", "/api/chat", chat_streamed, calls),
        ):
            control("-z")
            control("-i", "on")
            for _ in range(n):
                status, _body = client.post(path, body)
                assert status == 200, status
            # Let the store's writer and the log thread do their share of these calls.
            time.sleep(1.0)
            control("-i", "off")
            before = set(work.glob("callgrind.out.*"))
            control("-d")
            (dump,) = set(work.glob("callgrind.out.*")) - before
            results[name] = total_instructions(dump) / n
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                dump.rename(keep / f"{name}.callgrind")
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(60)
        upstream.wait(10)
    results["per_token"] = (results["ask_async"] - results["ask_async_1"]) / (tokens - 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument(
        "--keep", type=Path, help="keep the callgrind files here (callgrind_annotate)"
    )
    parser.add_argument(
        "--cap", type=int, help="give the upstream this cap (the fair queue's slot path)"
    )
    args = parser.parse_args(argv)
    result = measure(
        args.root.resolve(), args.calls, args.tokens, args.spacing, args.keep, args.cap
    )
    capped = "no cap" if args.cap is None else f"cap={args.cap}"
    print(f"checkout {args.root}: {args.calls} calls each, {capped}")
    rows = [
        ("ask_sync (8 tokens, whole)", result["ask_sync"] / 1e6, "M instructions / call"),
        ("ask_async, 1 token", result["ask_async_1"] / 1e6, "M instructions / call"),
        (
            f"ask_async, {args.tokens} spaced tokens",
            result["ask_async"] / 1e6,
            "M instructions / call",
        ),
        ("one more streamed token", result["per_token"] / 1e3, "k instructions"),
        ("/api/chat (8 tokens, whole)", result["chat_whole"] / 1e6, "M instructions / call"),
        ("/api/chat, 1 token streamed", result["chat_streamed"] / 1e6, "M instructions / call"),
    ]
    for label, value, unit in rows:
        print(f"  {label:<28} {value:8.3f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
