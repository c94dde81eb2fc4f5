"""A JSON-lines usage store for `gateway_bench.py --store lines`: the request path's own cost.

The shipped TinyDB store rewrites its whole file on every batch, so under load it costs more
than everything else together, and it is being replaced by an append-only journal with group
commit (issue 3). This store does what such a journal does on the hot path: encode the record
once, queue it without blocking, and let one thread append the queued lines in a batch. It
skips the fsync, so its figures are the gateway's, not the disk's. It answers the dashboard
query the benchmark uses to check that every call was recorded.

python bench/line_store.py <app.py flags>   (runs the gateway with this store)
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from settings import parse_settings  # noqa: E402
from store import StoreHealth, UsageQuery, UsageRecord  # noqa: E402

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(UsageRecord).decode


class LineStore:
    # Never deletes; the dashboard's ETag reads it.
    deleted = 0

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "usage.jsonl"
        self._file = open(self.path, "ab")  # noqa: SIM115 (closed in aclose)
        self._guard = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[bytes] = []
        self._closing = threading.Event()
        # Group commit: the writer wakes every few milliseconds and appends whatever queued,
        # so an append is a list append and never wakes a thread.
        self._writer = threading.Thread(target=self._write_loop, daemon=True)
        self._writer.start()

    def append(self, record: UsageRecord) -> None:
        line = _encode(record) + b"\n"
        with self._guard:
            self._pending.append(line)

    def _write_loop(self) -> None:
        while not self._closing.wait(0.005):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        with self._write_lock:
            with self._guard:
                batch, self._pending = self._pending, []
            if batch:
                self._file.write(b"".join(batch))
                self._file.flush()

    async def flush(self) -> None:
        await asyncio.to_thread(self._drain)

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        await self.flush()
        records = [_decode(line) for line in self.path.read_bytes().splitlines()]
        records = [
            r
            for r in records
            if (q.project is None or r.project == q.project)
            and (q.status is None or r.status == q.status)
        ]
        records.sort(key=lambda r: r.id, reverse=True)
        return records[q.offset : q.offset + q.limit]

    def health(self) -> StoreHealth:
        return StoreHealth(status="ok", path=str(self.path), pending=len(self._pending))

    async def aclose(self) -> None:
        self._closing.set()
        await asyncio.to_thread(self._writer.join)
        self._file.close()


def main() -> int:
    settings = parse_settings(sys.argv[1:])
    store = LineStore(settings.data_path)
    # app.main opens the store by calling app.UsageStore(folder, ...); hand it this one instead.
    module: Any = app
    module.UsageStore = lambda folder, **options: store
    code: int = module.main(sys.argv[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
