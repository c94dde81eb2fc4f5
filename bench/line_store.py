"""A JSON-lines usage store for `gateway_bench.py --store lines`: the request path's own cost.

This store does what the shipped store's journal does on the hot path: encode the record once,
queue it without blocking, and let one thread append the queued lines in a batch. It skips the
fsync and the TinyDB files, so its figures are the gateway's, not the disk's. It reads by
scanning the whole file, which is enough for the benchmark's checks. It is also the smallest
example of a second `store.base.UsageStore`: the app is built with it, nothing is patched.

python bench/line_store.py <app.py flags>   (runs the gateway with this store)
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from access.keys import Access  # noqa: E402
from app import create_app  # noqa: E402
from ollama_host.requestlog import configure_logging  # noqa: E402
from ollama_host.server import serve  # noqa: E402
from ollama_host.settings import parse_settings  # noqa: E402
from store import Stats, StoreHealth, UsageQuery, UsageRecord  # noqa: E402
from store.base import export_pages  # noqa: E402
from store.stats import StatsBuilder  # noqa: E402
from store.tinydb.reading import Filter  # noqa: E402

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(UsageRecord).decode


class LineStore:
    """A `store.base.UsageStore` that appends JSON lines and reads them back by scanning."""

    shared = False

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "usage.jsonl"
        self._file = open(self.path, "ab")  # noqa: SIM115 (closed in aclose)
        self._guard = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[bytes] = []
        self._closing = threading.Event()
        self.changes = 0
        # Group commit: the writer wakes every few milliseconds and appends whatever queued,
        # so an append is a list append and never wakes a thread.
        self._writer = threading.Thread(target=self._write_loop, daemon=True)
        self._writer.start()

    def append(self, record: UsageRecord) -> None:
        self.changes += 1
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

    async def _matching(self, q: UsageQuery, *, paging: bool) -> list[UsageRecord]:
        await self.flush()
        match = Filter(q, paging=paging)
        records = [_decode(line) for line in self.path.read_bytes().splitlines()]
        return [r for r in records if match.record(r)]

    async def query(self, q: UsageQuery) -> list[UsageRecord]:
        records = await self._matching(q, paging=True)
        records.sort(key=lambda r: r.id, reverse=True)
        return records[q.offset : q.offset + q.limit]

    async def stats(self, q: UsageQuery, *, bucket_seconds: int) -> Stats:
        builder = StatsBuilder(bucket_seconds)
        builder.add_records(await self._matching(q, paging=False))
        return builder.build()

    def export(self, q: UsageQuery) -> AsyncIterator[list[UsageRecord]]:
        return export_pages(self, q)

    def health(self) -> StoreHealth:
        return StoreHealth(status="ok", path=str(self.path), pending=len(self._pending))

    async def aclose(self) -> None:
        self._closing.set()
        await asyncio.to_thread(self._writer.join)
        self._file.close()


def main() -> int:
    """The gateway as app.py runs it, built with this store instead of the TinyDB one."""
    settings = parse_settings(sys.argv[1:])
    configure_logging(settings)
    access, _ = Access.open(settings.data_path, settings.admin_token)
    app = create_app(settings, store=LineStore(settings.data_path), access=access)
    return serve(app, settings)


if __name__ == "__main__":
    sys.exit(main())
