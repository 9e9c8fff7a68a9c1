"""The embedded ledger: one row per request in a SQLite file, WAL mode, and the request's
hash-chained audit entry committed in the same transaction.

Writes go through one writer thread that commits in groups: each request awaits the
commit of its own row, so a request reported complete is on disk (it survives kill -9),
while many concurrent requests share one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from turnout import sqlitedb
from turnout.ledger.audit import utc_now
from turnout.ledger.audit_store import SQLITE_MIGRATIONS as AUDIT_MIGRATIONS
from turnout.ledger.audit_store import sqlite_append
from turnout.ledger.base import COLUMNS, LedgerRow
from turnout.ledger.capture import MIGRATIONS as CAPTURE_MIGRATIONS
from turnout.ledger.capture import CapturedAnswer, PendingCapture
from turnout.ledger.capture_writer import LaterAnswer, SQLiteCaptureWriter
from turnout.ledger.writer import GroupCommitWriter

# Append-only: never edit a migration that has shipped; add a new one.
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_requests", [
        """CREATE TABLE requests (
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
            trace_id TEXT)""",
        "CREATE INDEX requests_ts ON requests (ts)",
    ]),
    ("0002_requests_key_id", [
        "ALTER TABLE requests ADD COLUMN key_id TEXT",
        "CREATE INDEX requests_key_ts ON requests (key_id, ts)",
    ]),
    ("0003_feedback", [  # turnout.ledger.feedback: one thumbs or 1-5 rating per request
        """CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            request_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            value INTEGER NOT NULL,
            satisfaction REAL NOT NULL,
            comment TEXT)""",
        "CREATE INDEX feedback_ts ON feedback (ts)",
    ]),
    ("0004_requests_function", [  # turnout.functions: which function, variant and template answered
        "ALTER TABLE requests ADD COLUMN function TEXT",
        "ALTER TABLE requests ADD COLUMN variant TEXT",
        "ALTER TABLE requests ADD COLUMN template_hash TEXT",
        "ALTER TABLE requests ADD COLUMN episode TEXT",
        "ALTER TABLE requests ADD COLUMN function_attempt TEXT",
        "ALTER TABLE requests ADD COLUMN function_outcome TEXT",
        "CREATE INDEX requests_function ON requests (function, tenant, ts)",
        "CREATE INDEX requests_episode ON requests (function, episode)",
    ]),
    ("0005_requests_signals", [  # a cascade's confidence signals of the weak draft (JSON), for routers to learn from
        "ALTER TABLE requests ADD COLUMN signals TEXT",
    ]),
    ("0006_requests_endpoint", [  # a pool engine's endpoint that answered (turnout.engines.pool)
        "ALTER TABLE requests ADD COLUMN endpoint TEXT",
    ]),
]


_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class SQLiteLedger(GroupCommitWriter):
    def __init__(self, path: str | Path, max_batch: int = 512, audit: bool = True) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self.audit = audit
        conn = sqlitedb.connect(self.path)
        sqlitedb.migrate(conn, "ledger_migrations", MIGRATIONS)
        sqlitedb.migrate(conn, "audit_migrations", AUDIT_MIGRATIONS)
        sqlitedb.migrate(conn, "capture_migrations", CAPTURE_MIGRATIONS)
        conn.close()
        self.captures = SQLiteCaptureWriter(self.path)
        self._turn = sqlitedb.WriteLock(self.path)
        self._start("turnout-ledger")

    def _write(self, conn: sqlite3.Connection | None, rows: list[LedgerRow]) -> sqlite3.Connection:
        conn = conn or sqlitedb.connect(self.path)
        with self._turn.held():  # several worker processes: in turn, woken at once (sqlitedb.WriteLock)
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, [row.values() for row in rows])
                if self.audit:
                    for row in rows:
                        sqlite_append(conn, row.audit_payload(), utc_now())
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return conn

    def keep(self, capture: PendingCapture) -> None:
        self.captures.put(capture)

    def keep_answer(self, request_id: str, answer: CapturedAnswer, answered_score: float | None = None) -> None:
        self.captures.put(LaterAnswer(request_id, answer, answered_score))

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(self.captures.close)
        self._turn.close()

    def rows(self, since: float | None = None) -> list[dict[str, Any]]:
        return read_rows(self.path, since)

    def spend_since(self, since: float) -> dict[str, list[float]]:
        return spend_since(self.path, since)


def spend_since(path: str | Path, since: float) -> dict[str, list[float]]:
    """The cost of each request per API key since a Unix time (uses the (key_id, ts) index)."""
    conn = sqlitedb.connect(path)
    try:
        spent: dict[str, list[float]] = {}
        for key_id, cost in conn.execute("SELECT key_id, cost_usd FROM requests WHERE key_id IS NOT NULL AND ts >= ?",
                                         (since,)):
            spent.setdefault(key_id, []).append(float(cost or 0.0))
        return spent
    finally:
        conn.close()


def read_rows(path: str | Path, since: float | None = None) -> list[dict[str, Any]]:
    """All ledger rows (or those since a Unix time), oldest first; uses the ``ts`` index."""
    conn = sqlitedb.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        if since is None:
            cur = conn.execute("SELECT * FROM requests ORDER BY id")
        else:
            cur = conn.execute("SELECT * FROM requests WHERE ts >= ? ORDER BY id", (since,))
        return [dict(r) for r in cur]
    finally:
        conn.close()
