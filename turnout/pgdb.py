"""PostgreSQL plumbing shared by every PostgreSQL store (the counterpart of ``turnout.sqlitedb``):
append-only named migrations, applied once each under an advisory lock so that gateways starting
together do not both create the tables, and :class:`Connection`, the one locked, reconnecting
connection a store keeps."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

Migration = tuple[str, Sequence[str]]  # (name, SQL statements); never edit or reorder, only append


def migrate(cur: Any, schema: str, table: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply, in order, the migrations not yet recorded in ``schema.table``; the caller holds
    the transaction. Returns the names applied. (Values as quoted literals, no placeholders: the
    cursor may take ``%s`` or ``$1``.)"""
    from psycopg.sql import SQL, Literal

    cur.execute(SQL("SELECT pg_advisory_xact_lock(hashtext({}))").format(Literal(f"turnout.{table}.{schema}")))
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
        cur.execute(SQL(f"INSERT INTO {schema}.{table} (name) VALUES ({{}})").format(Literal(name)))
        applied.append(name)
    return applied


class Connection:
    """One psycopg connection shared by a store's threads, serialised by a lock, opened on first
    use and once more when the server dropped it. ``run(fn)`` calls ``fn(cursor)`` in a
    transaction (retried once on a new connection if the old one broke, so ``fn`` must be safe to
    repeat); ``transaction()`` yields a cursor without the retry. Its cursors take PostgreSQL's
    own placeholders, ``$1``, ``$2``, ..., and send the text as written (psycopg's ``RawCursor``,
    not ``%s``): the SQL a store shares with SQLite (``turnout.sqlshared``) runs unchanged, and a
    ``%`` in a literal is a ``%``."""

    def __init__(self, dsn: str, *, search_path: str | None = None, connect_timeout: int | None = 10,
                 **options: Any) -> None:
        import psycopg

        self._psycopg = psycopg
        self.dsn, self.search_path = dsn, search_path
        self.options = dict(options, autocommit=True, cursor_factory=psycopg.RawCursor)
        if connect_timeout is not None:
            self.options["connect_timeout"] = connect_timeout
        self.lock = threading.Lock()
        self.conn: Any = None

    def connection(self) -> Any:
        """The open connection, (re)connecting if need be; the caller holds ``lock``."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = self._psycopg.connect(self.dsn, **self.options)
            if self.search_path:
                self.conn.execute(f"SET search_path TO {self.search_path}")
        return self.conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.lock:
            conn = self.connection()
            with conn.transaction(), conn.cursor() as cur:
                yield cur

    def run(self, fn: Callable[[Any], T]) -> T:
        with self.lock:
            for attempt in (0, 1):
                try:
                    conn = self.connection()
                    with conn.transaction(), conn.cursor() as cur:
                        return fn(cur)
                except self._psycopg.OperationalError:
                    if attempt or self.conn is None or not self.conn.broken:
                        raise
                    self.conn = None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
