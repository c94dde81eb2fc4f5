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
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from access.keys import Access

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


class FakeServer:
    """A server that speaks just enough of PostgreSQL's protocol to refuse a password, as a
    real one does with password authentication (the machine's server trusts everyone)."""

    def __init__(self) -> None:
        import socket
        import threading

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port: int = self._sock.getsockname()[1]
        self.passwords: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import struct

        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    while True:
                        size, code = struct.unpack("!ii", _read(conn, 8))
                        _read(conn, size - 8)
                        if code in (80877103, 80877104):  # SSL or GSS encryption: no
                            conn.sendall(b"N")
                            continue
                        break
                    conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
                    _, size = struct.unpack("!ci", _read(conn, 5))  # the password message
                    self.passwords.append(_read(conn, size - 4).rstrip(b"\0"))
                    fields = b"".join(
                        key + value.encode() + b"\0"
                        for key, value in (
                            (b"S", "FATAL"),
                            (b"V", "FATAL"),
                            (b"C", "28P01"),
                            (b"M", 'password authentication failed for user "postgres"'),
                        )
                    )
                    body = fields + b"\0"
                    conn.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)
                except (OSError, struct.error):
                    continue

    def close(self) -> None:
        self._sock.close()


def _read(conn: object, size: int) -> bytes:
    import socket

    assert isinstance(conn, socket.socket)
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def execute(dsn: str, statements: str) -> None:
    """Run SQL straight on the database, past the gateway (as someone else would)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute(statements.encode())


def access_of(
    dsn: str, admin_token: str | None, *, reset: bool = False
) -> tuple[Access, str | None]:
    """Access kept in this database, opened as a gateway opens it at start."""
    from access.pg_keys import open_access
    from store.postgres.database import Database

    return open_access(Database(dsn), admin_token, reset=reset)
