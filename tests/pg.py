"""PostgreSQL for the tests: a database of the test's own, made with a random name and
dropped after.

The server is the machine's (OLLAMA_HOST_TEST_POSTGRES names another). Without one the tests
that need it skip with the reason, except in CI (CI=true), where they fail: a CI run must
never pass by skipping what it was meant to check.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ADMIN_DSN = os.environ.get(
    "OLLAMA_HOST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@functools.cache
def unavailable() -> str | None:
    """Why no test database can be made here, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (scripts/setup installs the postgres extra)"
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL at {ADMIN_DSN}: {' '.join(str(exc).split())}"
    return None


def require() -> None:
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs PostgreSQL for these tests: {reason}")
    pytest.skip(reason)


def dsn_of(name: str, *, host: str | None = None, port: int | None = None) -> str:
    """The address of database `name` on the test server (or through host:port)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(ADMIN_DSN)
    user = params.get("user", "postgres")
    password = f":{params['password']}" if params.get("password") else ""
    host = host or str(params.get("host", "127.0.0.1"))
    port = port or int(str(params.get("port", 5432)))
    return f"postgresql://{user}{password}@{host}:{port}/{name}"


@contextmanager
def database() -> Iterator[str]:
    """A new, empty database for one test; its address. Dropped afterwards."""
    require()
    import psycopg
    from psycopg import sql

    name = f"oh_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield dsn_of(name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def scalar(dsn: str, query: str, *params: object) -> object:
    """One value read straight from the database, past the gateway."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


def column(dsn: str, query: str, *params: object) -> list[object]:
    """The first column of every row of a query, straight from the database."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query.encode(), params).fetchall()
    return [row[0] for row in rows]
