"""The storage plumbing every store shares: turnout.sqlitedb, turnout.pgdb and the SQL written
once for both (turnout.sqlshared)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest


def test_sql_shared_by_sqlite_and_postgres_reaches_both_unchanged(tmp_path: Path, pg_schema: str) -> None:
    """The tasks, keys and ledger stores write their SQL once, with numbered placeholders
    (turnout.sqlshared): the same text runs on SQLite and PostgreSQL, a value is used twice, and a
    ``?`` or a ``%`` inside a literal is left alone (no translation rewrites the text)."""
    from tests.conftest import PG_DSN
    from turnout import pgdb, sqlitedb
    from turnout.sqlshared import Args

    a = Args()
    sql = f"SELECT '100%?' || {a('x')}, {a('ab')} LIKE 'a%', {a(2)} * 3, $1"
    assert sql == "SELECT '100%?' || $1, $2 LIKE 'a%', $3 * 3, $1" and a == ["x", "ab", 2]
    expect = ("100%?x", 1, 6, "x")
    conn = sqlitedb.connect(tmp_path / "t.sqlite")
    assert tuple(sqlitedb.Numbered(conn).execute(sql, a).fetchone()) == expect
    conn.close()
    pg = pgdb.Connection(PG_DSN)
    try:
        assert pg.run(lambda cur: cur.execute(sql, a).fetchone()) == ("100%?x", True, 6, "x")
    finally:
        pg.close()


def test_a_missing_value_is_an_error_not_a_null(tmp_path: Path) -> None:
    """A placeholder with no value fails on both databases (a numbering slip cannot store NULL)."""
    from tests.conftest import PG_DSN
    from turnout import pgdb, sqlitedb

    conn = sqlitedb.connect(tmp_path / "t.sqlite")
    with pytest.raises(sqlite3.ProgrammingError):
        sqlitedb.Numbered(conn).execute("SELECT $1, $2", ["only one"])
    conn.close()
    psycopg = pytest.importorskip("psycopg")
    pg = pgdb.Connection(PG_DSN)
    try:
        with pytest.raises(psycopg.Error):
            pg.run(lambda cur: cur.execute("SELECT $1, $2", ["only one"]))
    finally:
        pg.close()


def test_read_only_never_creates_or_writes(tmp_path: Path) -> None:
    """sqlitedb.read_only, the CLI's look at a gateway's file: a missing file is an error (no empty
    file left behind), and an existing one cannot be written through it."""
    from turnout import sqlitedb

    with pytest.raises(sqlite3.OperationalError):
        sqlitedb.read_only(tmp_path / "missing dir" / "t.sqlite")
    assert not (tmp_path / "missing dir").exists()
    conn = sqlitedb.connect(tmp_path / "odd ?#name.sqlite")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    ro = sqlitedb.read_only(tmp_path / "odd ?#name.sqlite")
    assert ro.execute("SELECT x FROM t").fetchall() == [(1,)]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("INSERT INTO t VALUES (2)")
    ro.close()
