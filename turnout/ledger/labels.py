"""The store of routing labels learned from traffic (:class:`Label`: for one
prompt, how well the weak and the strong engine answered, where the label came from).

Privacy: ``prompt`` is what a remote engine was allowed to see: the pseudonymized copy when the
guards replaced PII, and a request with findings that cannot be pseudonymized (``sensitive`` /
``restricted``, kept local) is never labelled; callers pass the text through
:func:`turnout.routing.shadow.labelable_prompt`. Rows are only appended.

The table lives in the gateway's SQLite file (own migration list, ``label_migrations``) or, for
scale-out, in PostgreSQL (:class:`PostgresLabels`).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout import sqlitedb
from turnout.sqlshared import Args, marks

SOURCES = ("cascade", "shadow", "feedback", "replay")


@dataclass(frozen=True, slots=True)
class Label:
    """One labelled prompt. Scores in [0, 1]; None where that engine's outcome is unknown."""

    tenant: str
    alias: str
    prompt: str                 # pseudonymized (see the module docstring)
    weak_engine: str
    strong_engine: str
    source: str
    judge: str
    weak_score: float | None
    strong_score: float | None
    request_id: str | None = None
    cost_usd: float = 0.0       # what obtaining the label cost (the shadow call, the judge call)
    ts: float = 0.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"label source must be one of {SOURCES}, got {self.source!r}")
        for name in ("weak_score", "strong_score"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.weak_score is None and self.strong_score is None:
            raise ValueError("a label needs the outcome of at least one engine")

    def values(self) -> tuple[Any, ...]:
        return (self.ts or time.time(), self.tenant, self.alias, self.prompt,
                hashlib.sha256(self.prompt.encode()).hexdigest(), self.weak_engine, self.strong_engine, self.source,
                self.judge, self.weak_score, self.strong_score, self.request_id, self.cost_usd)


def counts_by_source(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[str(r["source"])] = out.get(str(r["source"]), 0) + 1
    return out

# Append-only: never edit a migration that has shipped; add a new one.
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_route_labels", [
        """CREATE TABLE route_labels (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            tenant TEXT NOT NULL,
            alias TEXT NOT NULL,
            prompt TEXT NOT NULL,
            prompt_sha256 TEXT NOT NULL,
            weak_engine TEXT NOT NULL,
            strong_engine TEXT NOT NULL,
            source TEXT NOT NULL,
            judge TEXT NOT NULL,
            weak_score REAL,
            strong_score REAL,
            request_id TEXT,
            cost_usd REAL NOT NULL DEFAULT 0)""",
        "CREATE INDEX route_labels_alias_ts ON route_labels (alias, ts)",
    ]),
    ("0002_route_labels_ts", [  # the dashboard's drift panels read a time window of every route
        "CREATE INDEX route_labels_ts ON route_labels (ts)",
    ]),
]


def pg_migrations(s: str) -> list[tuple[str, list[str]]]:
    """The PostgreSQL counterpart of :data:`MIGRATIONS` (same names, same columns)."""
    return [
        ("0001_route_labels", [
            f"""CREATE TABLE {s}.route_labels (
                id BIGSERIAL PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                tenant TEXT NOT NULL,
                alias TEXT NOT NULL,
                prompt TEXT NOT NULL,
                prompt_sha256 TEXT NOT NULL,
                weak_engine TEXT NOT NULL,
                strong_engine TEXT NOT NULL,
                source TEXT NOT NULL,
                judge TEXT NOT NULL,
                weak_score DOUBLE PRECISION,
                strong_score DOUBLE PRECISION,
                request_id TEXT,
                cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0)""",
            f"CREATE INDEX route_labels_alias_ts ON {s}.route_labels (alias, ts)",
        ]),
        ("0002_route_labels_ts", [f"CREATE INDEX route_labels_ts ON {s}.route_labels (ts)"]),
    ]


COLUMNS = ("ts", "tenant", "alias", "prompt", "prompt_sha256", "weak_engine", "strong_engine", "source", "judge",
           "weak_score", "strong_score", "request_id", "cost_usd")


def _insert(table: str) -> str:
    return f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks(len(COLUMNS))})"


def _select(table: str, alias: str | None, since: float | None, tenant: str | None) -> tuple[str, Args]:
    where, a = [], Args()
    for column, value, op in (("alias", alias, "="), ("ts", since, ">="), ("tenant", tenant, "=")):
        if value is not None:
            where.append(f"{column} {op} {a(value)}")
    sql = f"SELECT id, {', '.join(COLUMNS)} FROM {table}"
    return sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY ts, id", a


class SQLiteLabels:
    """Labels in the gateway's SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = sqlitedb.connect(self.path)
        sqlitedb.migrate(self._conn, "label_migrations", MIGRATIONS)
        self._lock = threading.Lock()

    def add_sync(self, label: Label) -> None:
        with self._lock, sqlitedb.immediate(self._conn) as c:
            sqlitedb.Numbered(c).execute(_insert("route_labels"), label.values())

    async def add(self, label: Label) -> None:
        await asyncio.to_thread(self.add_sync, label)

    def rows(self, alias: str | None = None, since: float | None = None, tenant: str | None = None
             ) -> list[dict[str, Any]]:
        with self._lock:
            return _dicts(sqlitedb.Numbered(self._conn).execute(*_select("route_labels", alias, since, tenant)))

    def count(self, alias: str) -> int:
        """The route's labels so far (the retraining schedule compares it with the last fit's)."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM route_labels WHERE alias = ?", (alias,)).fetchone()[0])

    async def close(self) -> None:
        self._conn.close()


class PostgresLabels:
    """Labels in PostgreSQL ``schema.route_labels``, shared by every replica (psycopg 3), on one
    ``pgdb.Connection``."""

    def __init__(self, dsn: str, schema: str = "public", migrate: bool = True) -> None:
        """``migrate=False`` for readers: they never create the table."""
        from turnout import pgdb

        self.dsn, self.schema = dsn, schema
        self.pg = pgdb.Connection(dsn)
        if migrate:
            self.pg.run(lambda cur: pgdb.migrate(cur, schema, "label_migrations", pg_migrations(schema)))

    def add_sync(self, label: Label) -> None:
        with self.pg.transaction() as cur:  # not retried: a label is appended once
            cur.execute(_insert(f"{self.schema}.route_labels"), label.values())

    async def add(self, label: Label) -> None:
        await asyncio.to_thread(self.add_sync, label)

    def rows(self, alias: str | None = None, since: float | None = None, tenant: str | None = None
             ) -> list[dict[str, Any]]:
        query = _select(f"{self.schema}.route_labels", alias, since, tenant)
        return self.pg.run(lambda cur: _dicts(cur.execute(*query)))

    def count(self, alias: str) -> int:
        return self.pg.run(lambda cur: int(cur.execute(f"SELECT COUNT(*) FROM {self.schema}.route_labels "
                                                       "WHERE alias = $1", (alias,)).fetchone()[0]))

    async def close(self) -> None:
        self.pg.close()


def _dicts(cur: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
