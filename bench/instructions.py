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

    def post(self, path: str, body: bytes, extra: bytes = b"") -> tuple[int, bytes]:
        """`extra`: more header lines, each ending with CRLF."""
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"%sContent-Length: %d\r\n\r\n%s" % (path.encode(), extra, len(body), body)
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
    only: set[str] | None = None,
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
        # The same stream, resumable (routes/resuming.py): its events kept, a task of its own.
        # A checkout without resumable streams ignores the field and streams as above. What
        # happens --resume-window seconds after each (the events let go) is not counted.
        resumable = stream[:-1] + b', "resumable": true}'
        # Ollama's front: its own framing (NDJSON, the last line's metrics) on the same call.
        chat = (
            b'{"model": "llama3", "messages": [{"role": "user", "content": "hi [[tokens=%d]]"}], '
            b'"stream": %s}'
        )
        chat_whole, chat_streamed = chat % (8, b"false"), chat % (1, b"true")
        # OpenAI's chat completions and its Responses API on the same call (8 tokens), each
        # streamed with its usage (the Responses stream always ends with it).
        openai = (
            b'{"model": "llama3", "messages": [{"role": "user", "content": "hi [[tokens=8]]"}], '
            b'"stream": %s, "stream_options": {"include_usage": true}}'
        )
        responses = b'{"model": "llama3", "input": "hi [[tokens=8]]", "stream": %s}'
        # And streamed with spaced tokens, each in a read of its own: what a relayed token costs.
        spaced = b"[[tokens=%d]] [[delay=%g]]" % (tokens, spacing)
        openai_spaced = (openai % b"true").replace(b"[[tokens=8]]", spaced)
        responses_spaced = (responses % b"true").replace(b"[[tokens=8]]", spaced)
        # Anthropic's Messages on the same calls, with the header its clients always send.
        anthropic = (
            b'{"model": "llama3", "messages": [{"role": "user", "content": "hi %s"}], '
            b'"max_tokens": 100, "system": "be brief", "stream": %s}'
        )
        version = b"anthropic-version: 2023-06-01\r\n"
        kinds = (
            ("ask_sync", "/api/v1/ai/ask_sync", sync, calls),
            ("ask_async_1", "/api/v1/ai/ask_async", short, calls),
            ("ask_async", "/api/v1/ai/ask_async", stream, max(10, calls // 10)),
            ("ask_async_resumable", "/api/v1/ai/ask_async", resumable, max(10, calls // 10)),
            ("chat_whole", "/api/chat", chat_whole, calls),
            ("chat_streamed", "/api/chat", chat_streamed, calls),
            ("openai_whole", "/v1/chat/completions", openai % b"false", calls),
            ("openai_streamed", "/v1/chat/completions", openai % b"true", calls),
            ("responses_whole", "/v1/responses", responses % b"false", calls),
            ("responses_streamed", "/v1/responses", responses % b"true", calls),
            ("openai_spaced", "/v1/chat/completions", openai_spaced, max(10, calls // 10)),
            ("responses_spaced", "/v1/responses", responses_spaced, max(10, calls // 10)),
            ("anthropic_whole", "/v1/messages", anthropic % (b"[[tokens=8]]", b"false"), calls),
            ("anthropic_streamed", "/v1/messages", anthropic % (b"[[tokens=8]]", b"true"), calls),
            (
                "anthropic_spaced",
                "/v1/messages",
                anthropic % (spaced, b"true"),
                max(10, calls // 10),
            ),
        )
        selected = [k for k in kinds if only is None or k[0] in only]
        headers = {"/v1/messages": version}
        for _ in range(30):  # warm-up: caches, first-call paths
            for _name, path, body, _n in selected:
                if b"[[delay" not in body:
                    client.post(path, body, headers.get(path, b""))
        for name, path, body, n in selected:
            extra = headers.get(path, b"")
            control("-z")
            control("-i", "on")
            for _ in range(n):
                status, _body = client.post(path, body, extra)
                assert status == 200, (status, _body)
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
    if "ask_async" in results and "ask_async_1" in results:
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
        "--only",
        help="measure only these kinds, comma-separated (ask_sync, ask_async_1, ask_async, "
        "ask_async_resumable, "
        "chat_whole, chat_streamed, openai_whole, openai_streamed, responses_whole, "
        "responses_streamed, anthropic_whole, anthropic_streamed, ...)",
    )
    parser.add_argument(
        "--cap", type=int, help="give the upstream this cap (the fair queue's slot path)"
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    result = measure(
        args.root.resolve(), args.calls, args.tokens, args.spacing, args.keep, only, args.cap
    )
    capped = "no cap" if args.cap is None else f"cap={args.cap}"
    print(f"checkout {args.root}: {args.calls} calls each, {capped}")
    per_call = (1e6, "M instructions / call")
    rows = [
        ("ask_sync (8 tokens, whole)", "ask_sync", *per_call),
        ("ask_async, 1 token", "ask_async_1", *per_call),
        (f"ask_async, {args.tokens} spaced tokens", "ask_async", *per_call),
        ("one more streamed token", "per_token", 1e3, "k instructions"),
        (f"  the same {args.tokens}, resumable", "ask_async_resumable", *per_call),
        ("/api/chat (8 tokens, whole)", "chat_whole", *per_call),
        ("/api/chat, 1 token streamed", "chat_streamed", *per_call),
        ("/v1/chat/completions (8, whole)", "openai_whole", *per_call),
        ("/v1/chat/completions (8, streamed)", "openai_streamed", *per_call),
        ("/v1/responses (8, whole)", "responses_whole", *per_call),
        ("/v1/responses (8, streamed)", "responses_streamed", *per_call),
        (f"/v1/chat/completions ({args.tokens} spaced)", "openai_spaced", *per_call),
        (f"/v1/responses ({args.tokens} spaced)", "responses_spaced", *per_call),
        ("/v1/messages (8, whole)", "anthropic_whole", *per_call),
        ("/v1/messages (8, streamed)", "anthropic_streamed", *per_call),
        (f"/v1/messages ({args.tokens} spaced)", "anthropic_spaced", *per_call),
    ]
    for front in ("responses", "anthropic"):
        for how in ("whole", "streamed", "spaced"):
            if f"openai_{how}" in result and f"{front}_{how}" in result:
                ratio = result[f"{front}_{how}"] / result[f"openai_{how}"]
                result[f"ratio_{front}_{how}"] = ratio
                rows.append((f"{front} over chat, {how}", f"ratio_{front}_{how}", 1.0, "x"))
    for label, key, scale, unit in rows:
        if key in result:
            print(f"  {label:<36} {result[key] / scale:8.3f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
