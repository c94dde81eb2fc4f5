"""`python -m ollama_host import-usage --from DATA_DIR --store postgresql://...`

Copies a TinyDB data folder into a PostgreSQL store: every usage record, and the folder's API
keys, fingerprint secret and admin token hash where the database has none yet (so that keys
keep working and user fingerprints keep matching). Records carry their id and are stored once:
running it again adds nothing. The folder is only read, and locked meanwhile, so a gateway
cannot write to it during the copy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from store import StoreError, TinyDBStore, UsageQuery, open_store, shared

log = logging.getLogger("ollama_host")


def _count(dsn: str) -> int:
    import psycopg

    from store.postgres import database as pg

    params = pg.parse(dsn)
    pg.migrate(params)
    try:
        with pg.connect(params, purpose="import") as conn:
            row = conn.execute("SELECT count(*) FROM ollama_host.usage").fetchone()
    except psycopg.Error as exc:
        raise pg.DatabaseUnavailable(pg.unreachable(params, exc)) from None
    return int(row[0]) if row else 0


async def _copy(source: TinyDBStore, dsn: str) -> int:
    target = open_store(dsn)
    seen = 0
    try:
        async for page in source.export(UsageQuery()):
            for record in page:
                target.append(record)
            seen += len(page)
            await target.flush()  # a page at a time: memory stays flat
            health = target.health()
            if health.status != "ok":
                raise StoreError(health.error or "the database refused records")
    finally:
        await target.aclose()
    return seen


def import_usage(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_host import-usage",
        description="Copy a TinyDB data folder (usage records, API keys, secrets) into a "
        "PostgreSQL store. Safe to run again: nothing is copied twice.",
    )
    parser.add_argument("--from", dest="source", required=True, metavar="DATA_DIR")
    parser.add_argument(
        "--store",
        default=os.environ.get("OLLAMA_GATEWAY_STORE"),
        metavar="URL",
        help="postgresql://USER:PASSWORD@HOST:PORT/DB [OLLAMA_GATEWAY_STORE]",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    folder = Path(args.source).expanduser()
    if not args.store or not shared(args.store):
        parser.error("--store must be a postgresql:// address")
    if not (folder / "usage").is_dir() and not (folder / "usage.json").exists():
        log.error("%s holds no usage log (no usage/ folder): nothing to import", folder)
        return 1
    began = time.monotonic()
    try:
        source = TinyDBStore(folder)
        try:
            before = _count(args.store)
            seen = asyncio.run(_copy(source, args.store))
            added = _count(args.store) - before
        finally:
            source.close()
        from access.pg_keys import import_access
        from store.postgres.database import Database

        done = import_access(folder, Database(args.store))
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "read %d usage records from %s; %d added, %d there already (%.1f s)",
        seen,
        folder,
        added,
        seen - added,
        time.monotonic() - began,
    )
    for line in done:
        log.info("%s", line)
    return 0
