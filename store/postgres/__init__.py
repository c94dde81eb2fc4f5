"""The PostgreSQL store, shared by several gateways: the store itself (`store`), the schema,
its migrations and connections (`database`), and the rollups its stats read (`rollups`).

Requires the `postgres` extra (psycopg 3 and psycopg_pool)."""

from __future__ import annotations

from .store import PostgresStore

__all__ = ["PostgresStore"]
