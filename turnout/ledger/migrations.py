"""SQLite schema as named migrations that only grow: never edit one that has shipped,
append a new one. Applied in order, each once, recorded in ``_migrations``."""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_requests",
        """
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            request_id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            alias TEXT NOT NULL,
            rule TEXT,
            reason TEXT,
            strategy TEXT,
            score REAL,
            threshold REAL,
            engine TEXT,
            locality TEXT,
            hops TEXT NOT NULL DEFAULT '[]',
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            latency_ms REAL,
            ttft_ms REAL,
            cost_usd REAL NOT NULL DEFAULT 0,
            baseline_cost_usd REAL NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            http_status INTEGER NOT NULL,
            stream INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            labels TEXT NOT NULL DEFAULT '',
            trace_id TEXT
        );
        CREATE INDEX requests_ts ON requests (ts);
        """,
    ),
]


def migrate(conn: sqlite3.Connection, migrations: list[tuple[str, str]] = MIGRATIONS) -> list[str]:
    """Apply what is missing; return the names applied. Safe to call from several processes."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
        for name, sql in migrations:
            if name in done:
                continue
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement)
            conn.execute("INSERT INTO _migrations VALUES (?, strftime('%s','now'))", (name,))
            applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied
