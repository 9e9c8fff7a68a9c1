"""The audit log's tables (the chain itself, and its checks, are ``turnout.ledger.audit``).

Two stores behind one interface: :class:`SQLiteAuditLog` (a table in the gateway's
SQLite file, WAL, ``BEGIN IMMEDIATE`` so appends from threads and processes serialise)
and :class:`PostgresAuditLog` (psycopg 3; appends serialise on a row lock of the head).
Methods are synchronous; the pipeline calls ``await log.aappend(event)``, which runs the
append in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

from turnout.ledger.audit import (
    GENESIS,
    AuditEvent,
    AuditRecord,
    Verification,
    canonical_json,
    check_ledger,
    entry_hash,
    missing_tables,
    utc_now,
    verify_rows,
)


class AuditLog(ABC):
    """The interface: append, verify, tail. Implementations serialise appends themselves."""

    def append(self, event: AuditEvent | Mapping[str, Any], *, time: str | None = None) -> AuditRecord:
        payload = event.payload() if isinstance(event, AuditEvent) else dict(event)
        canonical_json(payload)  # fail early (NaN, non-JSON types), before taking the lock
        return self._append(payload, time or utc_now())

    async def aappend(self, event: AuditEvent | Mapping[str, Any]) -> AuditRecord:
        return await asyncio.to_thread(self.append, event)

    @abstractmethod
    def _append(self, payload: dict[str, Any], time: str) -> AuditRecord: ...

    @abstractmethod
    def verify(self, expect: tuple[int, str] | None = None) -> Verification:
        """Walk the chain (and the ledger and feedback rows it commits to) in one snapshot;
        ``expect`` is a saved head (seq, hash) the chain must still reach. NoAuditLog when the
        database has none of the log's tables."""

    @abstractmethod
    def tail(self, n: int = 10) -> list[AuditRecord]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(seq: int, time: str, prev_hash: str, payload_text: str, h: str) -> AuditRecord:
    return AuditRecord(seq, time, prev_hash, json.loads(payload_text), h)


# --- SQLite -----------------------------------------------------------------------------------

SQLITE_MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_entries_and_head", [
        """CREATE TABLE audit_entries (
               seq INTEGER PRIMARY KEY,
               time TEXT NOT NULL,
               prev_hash TEXT NOT NULL,
               payload TEXT NOT NULL,
               hash TEXT NOT NULL)""",
        """CREATE TABLE audit_head (
               id INTEGER PRIMARY KEY CHECK (id = 1),
               last_seq INTEGER NOT NULL,
               last_hash TEXT NOT NULL)""",
        f"INSERT INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, '{GENESIS}')",
    ]),
    ("0002_append_only_triggers", [
        """CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries
           BEGIN SELECT RAISE(ABORT, 'audit_entries is append-only'); END""",
        """CREATE TRIGGER audit_entries_no_delete BEFORE DELETE ON audit_entries
           BEGIN SELECT RAISE(ABORT, 'audit_entries is append-only'); END""",
    ]),
]


def sqlite_append(c: Any, payload: dict[str, Any], time: str) -> AuditRecord:
    """Append one entry using ``c``, inside a write transaction the caller holds (the
    ledger writer uses this to commit a request's row and its audit entry together)."""
    last_seq, prev = c.execute("SELECT last_seq, last_hash FROM audit_head WHERE id = 1").fetchone()
    seq = last_seq + 1
    h = entry_hash(prev, seq, time, payload)
    c.execute("INSERT INTO audit_entries (seq, time, prev_hash, payload, hash) VALUES (?, ?, ?, ?, ?)",
              (seq, time, prev, canonical_json(payload), h))
    c.execute("UPDATE audit_head SET last_seq = ?, last_hash = ? WHERE id = 1", (seq, h))
    return AuditRecord(seq, time, prev, payload, h)


class SQLiteAuditLog(AuditLog):
    def __init__(self, path: str | Path | None = None, *, migrate: bool = True) -> None:
        """``migrate=False`` (the CLI's reads) leaves the schema as it is: a dropped table is
        reported by ``verify``, never quietly re-created empty."""
        from turnout import sqlitedb as sqlite

        self.path = Path(path) if path is not None else sqlite.default_db_path()
        self._sqlite = sqlite
        self._conn = sqlite.connect(self.path)
        self._lock = threading.Lock()
        if migrate:
            sqlite.migrate(self._conn, "audit_migrations", SQLITE_MIGRATIONS)

    def _append(self, payload: dict[str, Any], time: str) -> AuditRecord:
        with self._lock, self._sqlite.immediate(self._conn) as c:
            return sqlite_append(c, payload, time)

    def verify(self, expect: tuple[int, str] | None = None) -> Verification:
        with self._lock:
            # one read transaction: a consistent snapshot even while others append (WAL)
            self._conn.execute("BEGIN")
            try:
                tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                broken = missing_tables(tables)
                if broken is not None:
                    return broken
                head = self._conn.execute("SELECT last_seq, last_hash FROM audit_head WHERE id = 1").fetchone()
                rows = self._conn.execute(
                    "SELECT seq, time, prev_hash, payload, hash FROM audit_entries ORDER BY seq")
                payloads: dict[str, tuple[int, dict[str, Any]]] = {}
                feedback: dict[str, tuple[int, dict[str, Any]]] = {}
                chain = verify_rows(rows, tuple(head) if head else None, payloads, feedback, expect)
                if not chain.ok or "requests" not in tables:
                    return chain
                return check_ledger(payloads, self._dicts("SELECT * FROM requests ORDER BY id"), chain, feedback,
                                    self._dicts("SELECT * FROM feedback ORDER BY id") if "feedback" in tables else None)
            finally:
                self._conn.execute("COMMIT")

    def _dicts(self, sql: str) -> Iterator[dict[str, Any]]:
        cur = self._conn.execute(sql)
        names = [d[0] for d in cur.description]
        return (dict(zip(names, r, strict=True)) for r in cur)

    def tail(self, n: int = 10) -> list[AuditRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT seq, time, prev_hash, payload, hash FROM audit_entries "
                                      "ORDER BY seq DESC LIMIT ?", (n,)).fetchall()
        return [_record(*r) for r in reversed(rows)]

    def close(self) -> None:
        self._conn.close()


# --- PostgreSQL -------------------------------------------------------------------------------

def _pg_migrations(schema: str) -> list[tuple[str, list[str]]]:
    s = schema
    return [
        ("0001_entries_and_head", [
            f"""CREATE TABLE {s}.audit_entries (
                   seq BIGINT PRIMARY KEY,
                   time TEXT NOT NULL,
                   prev_hash TEXT NOT NULL,
                   payload TEXT NOT NULL,
                   hash TEXT NOT NULL)""",
            f"""CREATE TABLE {s}.audit_head (
                   id INT PRIMARY KEY CHECK (id = 1),
                   last_seq BIGINT NOT NULL,
                   last_hash TEXT NOT NULL)""",
            f"INSERT INTO {s}.audit_head (id, last_seq, last_hash) VALUES (1, 0, '{GENESIS}')",
        ]),
        ("0002_append_only_triggers", [
            f"""CREATE FUNCTION {s}.audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'audit_entries is append-only'; END $$""",
            f"""CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON {s}.audit_entries
                FOR EACH ROW EXECUTE FUNCTION {s}.audit_append_only()""",
        ]),
    ]


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_append(cur: Any, payload: dict[str, Any], time: str, *, schema: str = "public") -> AuditRecord:
    """Append one entry using the psycopg cursor ``cur``, inside a transaction the caller
    holds (the PostgreSQL ledger commits a request's row and its audit entry together)."""
    if not _IDENT.match(schema):
        raise ValueError(f"schema must be a plain lower-case identifier, got {schema!r}")
    s = schema
    # the row lock on the single head row serialises appenders across connections and processes
    cur.execute(f"SELECT last_seq, last_hash FROM {s}.audit_head WHERE id = 1 FOR UPDATE")
    row = cur.fetchone()
    assert row is not None, "audit_head has no row: the migration did not run"
    seq, prev = row[0] + 1, row[1]
    h = entry_hash(prev, seq, time, payload)
    cur.execute(f"INSERT INTO {s}.audit_entries (seq, time, prev_hash, payload, hash) "
                "VALUES ($1, $2, $3, $4, $5)", (seq, time, prev, canonical_json(payload), h))
    cur.execute(f"UPDATE {s}.audit_head SET last_seq = $1, last_hash = $2 WHERE id = 1", (seq, h))
    return AuditRecord(seq, time, prev, payload, h)


class PostgresAuditLog(AuditLog):
    """The same log in PostgreSQL (``pip install 'psycopg[binary]'``), tables in ``schema``."""

    def __init__(self, dsn: str, *, schema: str = "public", migrate: bool = True) -> None:
        from turnout import pgdb

        if not _IDENT.match(schema):
            raise ValueError(f"schema must be a plain lower-case identifier, got {schema!r}")
        self.schema = schema
        self.pg = pgdb.Connection(dsn, connect_timeout=None)
        with self.pg.lock:
            self.pg.connection()  # fail here, not at the first use, when the server cannot be reached
        if migrate:
            self._migrate()

    def _migrate(self) -> None:
        from turnout import pgdb

        with self.pg.transaction() as cur:
            pgdb.migrate(cur, self.schema, "audit_migrations", _pg_migrations(self.schema))

    def _append(self, payload: dict[str, Any], time: str) -> AuditRecord:
        with self.pg.transaction() as cur:
            return postgres_append(cur, payload, time, schema=self.schema)

    def verify(self, expect: tuple[int, str] | None = None) -> Verification:
        s = self.schema
        with self.pg.transaction() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", (s,))
            tables = {r[0] for r in cur.fetchall()}
            broken = missing_tables(tables)
            if broken is not None:
                return broken
            cur.execute(f"SELECT last_seq, last_hash FROM {s}.audit_head WHERE id = 1")
            head = cur.fetchone()
            cur.execute(f"SELECT seq, time, prev_hash, payload, hash FROM {s}.audit_entries ORDER BY seq")
            payloads: dict[str, tuple[int, dict[str, Any]]] = {}
            feedback: dict[str, tuple[int, dict[str, Any]]] = {}
            chain = verify_rows(cur, (head[0], head[1]) if head else None, payloads, feedback, expect)
            if not chain.ok or "requests" not in tables:
                return chain
            ledger = _dicts(cur, f"SELECT * FROM {s}.requests ORDER BY id")
            fb = _dicts(cur, f"SELECT * FROM {s}.feedback ORDER BY id") if "feedback" in tables else None
            return check_ledger(payloads, ledger, chain, feedback, fb)

    def tail(self, n: int = 10) -> list[AuditRecord]:
        rows = self.pg.run(lambda cur: cur.execute(f"SELECT seq, time, prev_hash, payload, hash FROM "
                                                   f"{self.schema}.audit_entries ORDER BY seq DESC LIMIT $1",
                                                   (n,)).fetchall())
        return [_record(*r) for r in reversed(rows)]

    def close(self) -> None:
        self.pg.close()


def _dicts(cur: Any, sql: str) -> list[dict[str, Any]]:
    """Rows as dicts, read in ``cur``'s transaction (its snapshot)."""
    with cur.connection.cursor() as c:
        c.execute(sql)
        names = [d.name for d in c.description or ()]
        return [dict(zip(names, r, strict=True)) for r in c]


def open_audit_log(*, db: str | Path | None = None, dsn: str | None = None, schema: str = "public",
                   migrate: bool = True) -> AuditLog:
    """PostgreSQL when ``dsn`` is given, else SQLite at ``db`` (default ``$TURNOUT_DB`` or
    ``.turnout/turnout.sqlite``). ``migrate=False`` to read a log as it is (``turnout audit``)."""
    if dsn:
        return PostgresAuditLog(dsn, schema=schema, migrate=migrate)
    return SQLiteAuditLog(db, migrate=migrate)
