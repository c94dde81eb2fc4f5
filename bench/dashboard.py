"""What the dashboard costs the gateway: a poll answered 304, a poll for newer records,
the aggregates, and a full export, over a usage log of N records.

python -m bench.dashboard [N ...]      (default: 10000 100000)

It writes the log file directly in the store's current on-disk form (TinyDB JSON),
then runs the gateway as a user does and times each request from a client.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec

from store import InputMessage, UsageRecord, iso
from tests.gateway_proc import start_gateway
from tests.ollama_standin import start_standin

MODELS = ["llama3", "qwen", "mistral"]
PROJECTS = [f"project-{n}" for n in range(8)]


def write_log(folder: Path, count: int) -> str:
    """`count` records over the last 30 days; returns the newest id."""
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / count
    docs = {}
    newest = ""
    for n in range(count):
        moment = start + n * step
        newest = f"{int(moment.timestamp() * 1e6):014x}{n % 0xFFFFFF:06x}"
        record = UsageRecord(
            id=newest,
            date=iso(moment),
            total_seconds=1.5,
            total_tokens=300,
            input_tokens=100,
            output_tokens=200,
            model_name=MODELS[n % 3],
            input=[InputMessage("user", "a prompt of a typical length " * 10)],
            output="an answer of a typical length " * 20,
            project=PROJECTS[n % 8],
            process_id="worker",
            subprocess_id=str(n % 5),
            status="ok" if n % 50 else "error",
            ttft_seconds=0.2,
            load_seconds=0.01,
            prompt_eval_seconds=0.1,
            eval_seconds=1.2,
            upstream_seconds=1.4,
        )
        docs[str(n + 1)] = msgspec.to_builtins(record)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "usage.json").write_bytes(msgspec.json.encode({"usage": docs}))
    return newest


def timed(call: Callable[[], httpx.Response], expect: int, repeat: int) -> str:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = call()
        times.append(time.perf_counter() - began)
        assert response.status_code == expect, (response.status_code, response.text[:200])
    return f"median {statistics.median(times) * 1000:9.1f} ms  ({repeat} runs)"


def run(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, start_standin() as standin:
        data = Path(tmp) / "data"
        newest = write_log(data, count)
        size = (data / "usage.json").stat().st_size / 1e6
        with (
            start_gateway(data, "--ollama", standin.url) as gateway,
            httpx.Client(base_url=gateway.url, timeout=600) as client,
        ):
            since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
            stats_params = {"since": since, "bucket": "hour"}
            first = client.get("/api/v1/admin/stats", params=stats_params)
            etag = first.headers["etag"]
            print(f"\n{count:,} records, {size:.0f} MB on disk")
            rows = [
                (
                    "stats, last 24 h (200)",
                    lambda: client.get("/api/v1/admin/stats", params=stats_params),
                    200,
                    5,
                ),
                (
                    "stats, all time (200)",
                    lambda: client.get("/api/v1/admin/stats", params={"bucket": "day"}),
                    200,
                    3,
                ),
                (
                    "idle poll, If-None-Match (304)",
                    lambda: client.get(
                        "/api/v1/admin/stats", params=stats_params, headers={"If-None-Match": etag}
                    ),
                    304,
                    200,
                ),
                (
                    "table poll, after=newest (200, [])",
                    lambda: client.get("/api/v1/admin/dashboard", params={"after": newest}),
                    200,
                    5,
                ),
                (
                    "export, JSON, everything",
                    lambda: client.get("/api/v1/admin/export"),
                    200,
                    1,
                ),
            ]
            for name, call, expect, repeat in rows:
                print(f"  {name:36} {timed(call, expect, repeat)}")


def main(argv: list[str]) -> None:
    for count in [int(a) for a in argv] or [10_000, 100_000]:
        run(count)


if __name__ == "__main__":
    main(sys.argv[1:])
