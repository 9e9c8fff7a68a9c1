"""SQLite plumbing shared by every SQLite store: where the file is, how to open it (WAL, busy
timeout, explicit transactions), append-only named migrations, and :class:`Numbered` for the SQL
a store shares with PostgreSQL (``turnout.sqlshared``).

Each component keeps its own migration list (a list that only grows) and its own
bookkeeping table, so components that share ``.turnout/turnout.sqlite`` never step on
each other's schema.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_DB = Path(".turnout") / "turnout.sqlite"
BUSY_TIMEOUT_MS = 30_000

Migration = tuple[str, Sequence[str]]  # (name, SQL statements); never edit or reorder, only append


def default_db_path() -> Path:
    """``$TURNOUT_DB`` if set, else ``.turnout/turnout.sqlite`` (relative to the working directory)."""
    return Path(os.environ.get("TURNOUT_DB") or DEFAULT_DB)


def connect(path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open (creating the parent folder) in WAL mode, autocommit, so ``BEGIN IMMEDIATE`` is ours to issue.
    ``synchronous="FULL"`` for a store whose last commits must survive a power cut, not only a crash."""
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(p, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def read_only(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open an existing file for reading only (a CLI's look at a gateway's file: never creates
    it, never migrates); ``sqlite3.OperationalError`` when there is no such file."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class Numbered:
    """A connection's ``execute`` for SQL shared with PostgreSQL (``$1``, ``$2``, ...:
    ``turnout.sqlshared``), from a sequence of values: SQLite binds ``$n`` as the named
    parameter ``n``, so the values go in as a mapping."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, _named(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        return self.conn.executemany(sql, (_named(args) for args in rows))


def _named(args: Sequence[Any]) -> dict[str, Any]:
    return {str(i): v for i, v in enumerate(args, 1)}


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the database's write lock up front (``BEGIN IMMEDIATE``),
    so read-check-write sequences are atomic across threads and processes."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class WriteLock:
    """A lock between processes beside a SQLite file (``<file>-lock``, ``flock``), taken by the busy
    writers (the ledger's writer thread, the shared limiter) before ``BEGIN IMMEDIATE``.

    SQLite's own busy handler polls for the write lock with sleeps that grow to 100 ms, so between
    several worker processes writing all the time a waiting writer sleeps long after the lock was
    released (and can miss it again); a blocked ``flock`` wakes as soon as the holder lets go. Each
    instance is its own open file, so two of them exclude each other within a process as well; one
    instance is not for threads at once (hold a ``threading.Lock`` around it)."""

    def __init__(self, db: str | os.PathLike[str]) -> None:
        self.path = Path(f"{os.fspath(db)}-lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self, blocking: bool = True) -> bool:
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        if self._fd >= 0:  # once: a second close must not close a descriptor that was reused meanwhile
            os.close(self._fd)
            self._fd = -1


def record_applied(conn: sqlite3.Connection, table: str, names: Sequence[str]) -> None:
    """Create the bookkeeping ``table`` if need be and record ``names`` as applied, in the caller's
    transaction: for a component that adopts a file its older code had set up another way."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL "
                 "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))")
    conn.executemany(f"INSERT OR IGNORE INTO {table} (name) VALUES (?)", [(n,) for n in names])


def migrate(conn: sqlite3.Connection, table: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply, in order, the migrations not yet recorded in ``table``. Returns the names applied."""
    applied: list[str] = []
    with immediate(conn):
        record_applied(conn, table, ())
        done = {row[0] for row in conn.execute(f"SELECT name FROM {table}")}
        for name, statements in migrations:
            if name in done:
                continue
            for statement in statements:  # not executescript(): it would COMMIT our transaction
                conn.execute(statement)
            conn.execute(f"INSERT INTO {table} (name) VALUES (?)", (name,))
            applied.append(name)
    return applied

