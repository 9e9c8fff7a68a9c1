"""The scale-out ledger: the same rows as ``turnout.ledger.sqlite`` in PostgreSQL, shared by
every gateway replica, each row's hash-chained audit entry committed in the same
transaction (``turnout.ledger.audit.postgres_append``).

Like the SQLite ledger, writes go through one writer thread per process that commits in
groups: ``await ledger.record(row)`` returns once its row is committed, and rows that
arrive together share one transaction (and one fsync). Appends from several replicas
serialise on the audit head's row lock, so the chain stays one chain.

Tables live in ``schema`` (default ``public``) with their own append-only migration list
(``ledger_migrations``), applied under an advisory lock so replicas starting together
do not race. psycopg 3: ``pip install 'turnout[scale]'``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from turnout import pgdb
from turnout.ledger.audit import PostgresAuditLog, postgres_append, utc_now
from turnout.ledger.base import COLUMNS, LedgerRow
from turnout.ledger.feedback import UPSERT, Feedback, owned
from turnout.ledger.feedback import audit_payload as feedback_audit
from turnout.ledger.writer import GroupCommitWriter

log = logging.getLogger("turnout.ledger")


def migrations(s: str) -> list[tuple[str, list[str]]]:
    """Append-only, like the SQLite list; names match where the change is the same."""
    return [
        ("0001_requests", [
            f"""CREATE TABLE {s}.requests (
                id BIGSERIAL PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                request_id TEXT NOT NULL UNIQUE,
                tenant TEXT NOT NULL,
                alias TEXT NOT NULL,
                rule TEXT,
                reason TEXT,
                strategy TEXT,
                score DOUBLE PRECISION,
                threshold DOUBLE PRECISION,
                engine TEXT,
                locality TEXT,
                hops TEXT NOT NULL DEFAULT '[]',
                prompt_tokens BIGINT NOT NULL DEFAULT 0,
                completion_tokens BIGINT NOT NULL DEFAULT 0,
                latency_ms DOUBLE PRECISION,
                ttft_ms DOUBLE PRECISION,
                cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
                baseline_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
                status TEXT NOT NULL,
                http_status INTEGER NOT NULL,
                stream INTEGER NOT NULL DEFAULT 0,
                error TEXT,
                labels TEXT NOT NULL DEFAULT '',
                trace_id TEXT)""",
            f"CREATE INDEX requests_ts ON {s}.requests (ts)",
        ]),
        ("0002_requests_key_id", [
            f"ALTER TABLE {s}.requests ADD COLUMN key_id TEXT",
            f"CREATE INDEX requests_key_ts ON {s}.requests (key_id, ts)",
        ]),
        ("0003_feedback", [
            f"""CREATE TABLE {s}.feedback (
                id BIGSERIAL PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                request_id TEXT NOT NULL UNIQUE,
                kind TEXT NOT NULL,
                value INTEGER NOT NULL,
                satisfaction DOUBLE PRECISION NOT NULL,
                comment TEXT)""",
            f"CREATE INDEX feedback_ts ON {s}.feedback (ts)",
        ]),
        ("0004_requests_function", [
            f"ALTER TABLE {s}.requests ADD COLUMN function TEXT",
            f"ALTER TABLE {s}.requests ADD COLUMN variant TEXT",
            f"ALTER TABLE {s}.requests ADD COLUMN template_hash TEXT",
            f"ALTER TABLE {s}.requests ADD COLUMN episode TEXT",
            f"ALTER TABLE {s}.requests ADD COLUMN function_attempt TEXT",
            f"ALTER TABLE {s}.requests ADD COLUMN function_outcome TEXT",
            f"CREATE INDEX requests_function ON {s}.requests (function, tenant, ts)",
            f"CREATE INDEX requests_episode ON {s}.requests (function, episode)",
        ]),
        ("0005_requests_signals", [
            f"ALTER TABLE {s}.requests ADD COLUMN signals TEXT",
        ]),
    ]




class PostgresLedger(GroupCommitWriter):
    """``SQLiteLedger``'s interface over PostgreSQL: ``await record(row)``, ``rows(since)``,
    ``await close()``; plus ``query(sql, params)`` for the dashboard and feedback helpers."""

    def __init__(self, dsn: str, *, schema: str = "public", max_batch: int = 512, audit: bool = True,
                 connect_timeout: float = 10) -> None:
        import psycopg

        self._psycopg = psycopg
        self.dsn, self.max_batch, self.audit = dsn, max_batch, audit
        self.connect_timeout = connect_timeout
        PostgresAuditLog(dsn, schema=schema).close()  # validates the schema name; creates the audit tables
        self.schema = schema
        self._migrate()
        self._insert = (f"INSERT INTO {schema}.requests ({', '.join(COLUMNS)}) "
                        f"VALUES ({', '.join(['%s'] * len(COLUMNS))})")
        self._read: Any = None
        self._read_lock = threading.Lock()
        self._start("turnout-ledger-pg")

    def _connect(self) -> Any:
        return self._psycopg.connect(self.dsn, autocommit=True, connect_timeout=int(self.connect_timeout))

    def _migrate(self) -> None:
        with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            pgdb.migrate(cur, self.schema, "ledger_migrations", migrations(self.schema))

    # ---- writes (batched by GroupCommitWriter) ------------------------------------------
    def _write(self, conn: Any, rows: list[LedgerRow]) -> Any:
        if conn is None or conn.closed:
            conn = self._connect()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(self._insert, [row.values() for row in rows])
            if self.audit:
                for row in rows:
                    postgres_append(cur, row.audit_payload(), utc_now(), schema=self.schema)
        return conn

    def _recover(self, conn: Any) -> Any:
        """A broken connection is dropped; the next batch reconnects."""
        return None if conn is not None and (conn.closed or conn.broken) else conn

    async def close(self) -> None:
        await super().close()
        with self._read_lock:
            if self._read is not None:
                self._read.close()
                self._read = None

    # ---- reads ---------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL with ``?`` placeholders (as SQLite's); unqualified tables resolve to the schema."""
        with self._read_lock:
            if self._read is None or self._read.closed or self._read.broken:
                self._read = self._connect()
                self._read.execute(f"SET search_path TO {self.schema}")
            return list(self._read.execute(sql.replace("?", "%s"), tuple(params)).fetchall())

    def rows(self, since: float | None = None) -> list[dict[str, Any]]:
        """All ledger rows (or those since a Unix time), oldest first; uses the ``ts`` index."""
        return read_rows(self.dsn, since, schema=self.schema)

    def spend_since(self, since: float) -> dict[str, list[float]]:
        spent: dict[str, list[float]] = {}
        for key_id, cost in self.query("SELECT key_id, cost_usd FROM requests WHERE key_id IS NOT NULL AND ts >= ?",
                                       (since,)):
            spent.setdefault(key_id, []).append(float(cost or 0.0))
        return spent

    def _add_feedback(self, fb: Feedback, tenant: str | None, key_id: str | None = None) -> bool:
        s = self.schema
        with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SELECT tenant, key_id FROM {s}.requests WHERE request_id = %s", (fb.request_id,))
            row = cur.fetchone()
            if not owned(row, tenant, key_id):
                return False
            cur.execute(UPSERT.format(t=f"{s}.feedback", p="%s"),
                        (fb.ts, fb.request_id, fb.kind, fb.value, fb.satisfaction, fb.comment))
            postgres_append(cur, feedback_audit(fb, row[0]), utc_now(), schema=s)  # in the same transaction
            return True


class PostgresFeedback:
    """Feedback next to a :class:`PostgresLedger`'s rows (the interface of ``SQLiteFeedback``)."""

    def __init__(self, ledger: PostgresLedger) -> None:
        self.ledger = ledger

    async def add(self, fb: Feedback, tenant: str | None, key_id: str | None = None) -> bool:
        return await asyncio.to_thread(self.ledger._add_feedback, fb, tenant, key_id)

    def rows(self, since: float | None = None) -> list[dict[str, Any]]:
        return read_feedback(self.ledger.dsn, since, schema=self.ledger.schema)

    async def close(self) -> None:
        pass


def _dict_rows(dsn: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10, row_factory=dict_row) as conn:
        return [dict(r) for r in conn.execute(sql, tuple(params)).fetchall()]


def read_rows(dsn: str, since: float | None = None, *, schema: str = "public") -> list[dict[str, Any]]:
    """What ``turnout.ledger.sqlite.read_rows`` returns, from PostgreSQL."""
    _check(schema)
    if since is None:
        return _dict_rows(dsn, f"SELECT * FROM {schema}.requests ORDER BY id", ())
    return _dict_rows(dsn, f"SELECT * FROM {schema}.requests WHERE ts >= %s ORDER BY id", (since,))


def read_feedback(dsn: str, since: float | None = None, *, schema: str = "public") -> list[dict[str, Any]]:
    """What ``turnout.ledger.feedback.read_feedback`` returns, from PostgreSQL."""
    _check(schema)
    sql = (f"SELECT f.request_id, r.alias, r.engine, f.kind, f.value, f.satisfaction, f.ts FROM {schema}.feedback f "
           f"JOIN {schema}.requests r ON r.request_id = f.request_id")
    return _dict_rows(dsn, sql + " WHERE r.ts >= %s", (since,)) if since is not None else _dict_rows(dsn, sql, ())


def _check(schema: str) -> None:
    import re

    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", schema):
        raise ValueError(f"schema must be a plain lower-case identifier, got {schema!r}")
