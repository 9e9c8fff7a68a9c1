"""The scale-out ledger: the same rows as ``turnout.ledger.sqlite`` in PostgreSQL, shared by
every gateway replica, each row's hash-chained audit entry committed in the same
transaction (``turnout.ledger.audit_store.postgres_append``).

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
from collections.abc import Sequence
from typing import Any

from turnout import pgdb
from turnout.ledger.audit import utc_now
from turnout.ledger.audit_store import PostgresAuditLog, postgres_append
from turnout.ledger.base import COLUMNS, LedgerRow
from turnout.ledger.capture import CapturedAnswer, PendingCapture
from turnout.ledger.capture import pg_migrations as capture_migrations
from turnout.ledger.capture_writer import LaterAnswer, PostgresCaptureWriter
from turnout.ledger.feedback import UPSERT, Feedback, owned
from turnout.ledger.feedback import audit_payload as feedback_audit
from turnout.ledger.writer import GroupCommitWriter
from turnout.sqlshared import marks

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
        ("0006_requests_endpoint", [
            f"ALTER TABLE {s}.requests ADD COLUMN endpoint TEXT",
        ]),
    ]




class PostgresLedger(GroupCommitWriter):
    """``SQLiteLedger``'s interface over PostgreSQL: ``await record(row)``, ``rows(since)``,
    ``await close()``; plus ``query(sql, params)`` for the dashboard and feedback helpers.
    Two ``pgdb.Connection``s: the writer thread's, and one for reads and feedback."""

    def __init__(self, dsn: str, *, schema: str = "public", max_batch: int = 512, audit: bool = True,
                 connect_timeout: float = 10) -> None:
        self.dsn, self.max_batch, self.audit = dsn, max_batch, audit
        PostgresAuditLog(dsn, schema=schema).close()  # validates the schema name; creates the audit tables
        self.schema = schema
        self.pg = pgdb.Connection(dsn, search_path=schema, connect_timeout=int(connect_timeout))
        self._writer = pgdb.Connection(dsn, connect_timeout=int(connect_timeout))
        self.pg.run(lambda cur: pgdb.migrate(cur, schema, "ledger_migrations", migrations(schema)))
        self.pg.run(lambda cur: pgdb.migrate(cur, schema, "capture_migrations", capture_migrations(schema)))
        self.captures = PostgresCaptureWriter(dsn, schema)
        self._insert = f"INSERT INTO {schema}.requests ({', '.join(COLUMNS)}) VALUES ({marks(len(COLUMNS))})"
        self._start("turnout-ledger-pg")

    # ---- writes (batched by GroupCommitWriter) ------------------------------------------
    def _write(self, conn: Any, rows: list[LedgerRow]) -> Any:
        """One transaction on the writer's connection (reopened by the next batch if it broke)."""
        with self._writer.transaction() as cur:
            cur.executemany(self._insert, [row.values() for row in rows])
            if self.audit:
                for row in rows:
                    postgres_append(cur, row.audit_payload(), utc_now(), schema=self.schema)
        return self._writer

    def keep(self, capture: PendingCapture) -> None:
        self.captures.put(capture)

    def keep_answer(self, request_id: str, answer: CapturedAnswer, answered_score: float | None = None) -> None:
        self.captures.put(LaterAnswer(request_id, answer, answered_score))

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(self.captures.close)
        self._writer.close()  # if the writer thread never wrote
        self.pg.close()

    # ---- reads ---------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL shared with SQLite (``$1`` placeholders, ``turnout.sqlshared``); unqualified
        tables resolve to the schema."""
        return self.pg.run(lambda cur: list(cur.execute(sql, tuple(params)).fetchall()))

    def rows(self, since: float | None = None) -> list[dict[str, Any]]:
        """All ledger rows (or those since a Unix time), oldest first; uses the ``ts`` index."""
        return _select(self.pg, _rows_query(since, self.schema))

    def spend_since(self, since: float) -> dict[str, list[float]]:
        spent: dict[str, list[float]] = {}
        for key_id, cost in self.query("SELECT key_id, cost_usd FROM requests WHERE key_id IS NOT NULL AND ts >= $1",
                                       (since,)):
            spent.setdefault(key_id, []).append(float(cost or 0.0))
        return spent

    def _add_feedback(self, fb: Feedback, tenant: str | None, key_id: str | None = None) -> bool:
        s = self.schema
        with self.pg.transaction() as cur:  # not retried: the audit append must not happen twice
            cur.execute(f"SELECT tenant, key_id FROM {s}.requests WHERE request_id = $1", (fb.request_id,))
            row = cur.fetchone()
            if not owned(row, tenant, key_id):
                return False
            cur.execute(UPSERT.format(t=f"{s}.feedback"),
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
        return _select(self.ledger.pg, _feedback_query(since, self.ledger.schema))

    async def close(self) -> None:
        pass


def _select(pg: pgdb.Connection, query: tuple[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    def fetch(cur: Any) -> list[dict[str, Any]]:
        cur.row_factory = dict_row
        return [dict(r) for r in cur.execute(*query).fetchall()]

    return pg.run(fetch)


def _once(dsn: str, query: tuple[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    pg = pgdb.Connection(dsn)
    try:
        return _select(pg, query)
    finally:
        pg.close()


def _rows_query(since: float | None, schema: str) -> tuple[str, tuple[Any, ...]]:
    _check(schema)
    if since is None:
        return f"SELECT * FROM {schema}.requests ORDER BY id", ()
    return f"SELECT * FROM {schema}.requests WHERE ts >= $1 ORDER BY id", (since,)


def _feedback_query(since: float | None, schema: str) -> tuple[str, tuple[Any, ...]]:
    _check(schema)
    sql = (f"SELECT f.request_id, r.alias, r.engine, f.kind, f.value, f.satisfaction, f.ts FROM {schema}.feedback f "
           f"JOIN {schema}.requests r ON r.request_id = f.request_id")
    return (sql + " WHERE r.ts >= $1", (since,)) if since is not None else (sql, ())


def read_rows(dsn: str, since: float | None = None, *, schema: str = "public") -> list[dict[str, Any]]:
    """What ``turnout.ledger.sqlite.read_rows`` returns, from PostgreSQL."""
    return _once(dsn, _rows_query(since, schema))


def read_feedback(dsn: str, since: float | None = None, *, schema: str = "public") -> list[dict[str, Any]]:
    """What ``turnout.ledger.feedback.read_feedback`` returns, from PostgreSQL."""
    return _once(dsn, _feedback_query(since, schema))


def _check(schema: str) -> None:
    import re

    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", schema):
        raise ValueError(f"schema must be a plain lower-case identifier, got {schema!r}")
