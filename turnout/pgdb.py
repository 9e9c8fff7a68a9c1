"""PostgreSQL plumbing shared by the ledger and the audit log (the counterpart of
``turnout.sqlitedb``): append-only named migrations, applied once each under an advisory lock
so that gateways starting together do not both create the tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Migration = tuple[str, Sequence[str]]  # (name, SQL statements); never edit or reorder, only append


def migrate(cur: Any, schema: str, table: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply, in order, the migrations not yet recorded in ``schema.table``; the caller holds
    the transaction. Returns the names applied."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"turnout.{table}.{schema}",))
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {schema}.{table} (name TEXT PRIMARY KEY, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
    cur.execute(f"SELECT name FROM {schema}.{table}")
    done = {r[0] for r in cur.fetchall()}
    applied: list[str] = []
    for name, statements in migrations:
        if name in done:
            continue
        for statement in statements:
            cur.execute(statement)  # our own literal SQL
        cur.execute(f"INSERT INTO {schema}.{table} (name) VALUES (%s)", (name,))
        applied.append(name)
    return applied
