"""Tamper evidence of the ledger table itself: each audit entry commits to its request's full
ledger row (``row_sha256``), so editing any stored field of ``requests`` (cost, tenant, tokens,
engine, status...), deleting a row or inserting one is found by ``turnout audit verify``, which
names the row. Real gateways over loopback writing SQLite and PostgreSQL, and the PostgreSQL ledger on the real
server; rows written before row hashing (legacy entries) are checked on their repeated fields."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_DSN, Gateway, Upstream, hybrid_config
from tests.runcli import run_cli
from turnout.ledger.audit import ROW_HASH, row_sha256, utc_now
from turnout.ledger.audit_store import SQLiteAuditLog, sqlite_append
from turnout.ledger.sqlite import COLUMNS, LedgerRow, SQLiteLedger

ROOT = Path(__file__).resolve().parents[1]

# (column, a value different from any the test rows hold)
EDITS: list[tuple[str, object]] = [
    ("cost_usd", 0), ("tenant", "someone-else"), ("prompt_tokens", 987654), ("completion_tokens", 987655),
    ("engine", "local"), ("status", "error"), ("http_status", 599), ("ts", 1.0), ("alias", "private"),
    ("latency_ms", 123456.5), ("baseline_cost_usd", 42.0), ("key_id", "tk_forged"), ("labels", "forged"),
    ("error", "x"),
]


def verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("audit", "verify", *args, cwd=ROOT)


def _row(i: int) -> LedgerRow:
    return LedgerRow(ts=time.time(), request_id=f"r{i}", tenant="acme", alias="auto", status="ok", http_status=200,
                     engine="frontier", locality="remote", prompt_tokens=10 + i, completion_tokens=i,
                     latency_ms=float(i) + 0.25, cost_usd=i / 1000, baseline_cost_usd=i / 500, key_id="tk_a",
                     labels="pii" if i % 2 else "")


def test_row_hash_is_independent_of_number_types_and_nulls() -> None:
    row = dict(zip(COLUMNS, _row(3).values(), strict=True))
    as_stored = {**row, "id": 7, "cost_usd": float(row["cost_usd"]), "prompt_tokens": float(row["prompt_tokens"])}
    assert row_sha256(as_stored) == row_sha256(row)  # the database's id and int/float do not matter
    assert row_sha256({**row, "trace_id": None, "added_later": None}) == row_sha256(row)  # NULL columns
    for column, value in EDITS:
        assert row_sha256({**row, column: value}) != row_sha256(row), column


@pytest.mark.usefixtures("clean_upstreams")
def test_gateway_ledger_edits_are_named_by_verify(gateway_factory: Callable[..., Gateway], upstream: Upstream,
                                                  anthropic_upstream: Upstream) -> None:
    gw = gateway_factory(hybrid_config(upstream.url, anthropic_upstream.url))
    client = gw.openai()
    for _ in range(3):
        client.chat.completions.create(model="remote-only", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    rows = gw.ledger()
    assert len(rows) == 3 and all(r["cost_usd"] > 0 for r in rows)
    ok = verify_cli("--db", str(gw.db))
    assert ok.returncode == 0, ok.stderr
    assert "3 ledger rows match their entries" in ok.stdout

    raw = sqlite3.connect(gw.db, isolation_level=None)
    target = rows[1]
    for column, value in EDITS:
        raw.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (value, target["id"]))
        r = verify_cli("--db", str(gw.db))
        assert r.returncode == 1, (column, r.stdout)
        assert f"ledger row id {target['id']} (request {target['request_id']})" in r.stderr, (column, r.stderr)
        assert "was edited" in r.stderr
        raw.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (target[column], target["id"]))
        assert verify_cli("--db", str(gw.db)).returncode == 0, column  # restored: intact again

    # the entry's repeated fields say what the row held
    raw.execute("UPDATE requests SET cost_usd = 0, tenant = 'x' WHERE id = ?", (target["id"],))
    r = verify_cli("--db", str(gw.db), "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["first_bad_seq"] is None and len(report["bad_rows"]) == 1
    assert "cost_usd (entry" in report["bad_rows"][0] and "tenant (entry 'anonymous'" in report["bad_rows"][0]
    raw.execute("UPDATE requests SET cost_usd = ?, tenant = ? WHERE id = ?",
                (target["cost_usd"], target["tenant"], target["id"]))

    # a deleted row and a forged row are named too
    raw.execute("DELETE FROM requests WHERE id = ?", (rows[0]["id"],))
    forged = {**rows[2], "request_id": "forged-1"}
    del forged["id"]
    raw.execute(f"INSERT INTO requests ({', '.join(forged)}) VALUES ({', '.join('?' * len(forged))})",
                tuple(forged.values()))
    r = verify_cli("--db", str(gw.db))
    assert r.returncode == 1
    assert f"ledger row of request {rows[0]['request_id']} (audit seq 1) is missing: deleted" in r.stderr
    assert "(request forged-1) has no audit entry" in r.stderr
    raw.close()


def test_legacy_entries_are_checked_on_their_repeated_fields(tmp_path: Path) -> None:
    """Entries written before row hashing have no row_sha256: verify still passes on them, says
    how many, and catches edits to the fields they repeat (not to the others)."""
    db = tmp_path / "old.sqlite"

    async def write() -> None:
        ledger = SQLiteLedger(db)
        await ledger.record(_row(1))
        await ledger.close()

    asyncio.run(write())
    legacy = _row(2)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # as the gateway wrote before this change: the payload without the row hash
    conn.execute(f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                 legacy.values())
    payload: dict[str, Any] = legacy.audit_payload()
    del payload[ROW_HASH]
    sqlite_append(conn, payload, utc_now())
    conn.execute("COMMIT")

    with SQLiteAuditLog(db) as log:
        v = log.verify()
    assert v.ok and v.rows == 2 and v.legacy_rows == 1, v
    assert "1 written before row hashing" in str(v)
    conn.execute("UPDATE requests SET prompt_tokens = 0 WHERE request_id = 'r2'")  # not repeated: not seen
    with SQLiteAuditLog(db) as log:
        assert log.verify().ok
    conn.execute("UPDATE requests SET cost_usd = 0 WHERE request_id = 'r2'")
    with SQLiteAuditLog(db) as log:
        v = log.verify()
    assert not v.ok and len(v.bad_rows) == 1 and "(request r2), audit seq 2, was edited: cost_usd" in v.bad_rows[0]
    conn.close()


def test_postgres_ledger_edits_are_named_by_verify(pg_schema: str) -> None:
    import psycopg

    from turnout.ledger.postgres import PostgresLedger

    async def write() -> None:
        ledger = PostgresLedger(PG_DSN, schema=pg_schema)
        try:
            await asyncio.gather(*(ledger.record(_row(i)) for i in range(1, 6)))
        finally:
            await ledger.close()

    asyncio.run(write())
    args = ("--dsn", PG_DSN, "--schema", pg_schema)
    ok = verify_cli(*args)
    assert ok.returncode == 0 and "5 ledger rows match their entries" in ok.stdout, ok.stdout + ok.stderr
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        target = raw.execute(f"SELECT id, request_id, {', '.join(c for c, _ in EDITS)} FROM {pg_schema}.requests "
                             "WHERE request_id = 'r3'").fetchone()
        assert target is not None
        for n, (column, value) in enumerate(EDITS):
            raw.execute(f"UPDATE {pg_schema}.requests SET {column} = %s WHERE id = %s", (value, target[0]))
            r = verify_cli(*args)
            assert r.returncode == 1, (column, r.stdout)
            assert f"ledger row id {target[0]} (request r3)" in r.stderr and "was edited" in r.stderr, column
            raw.execute(f"UPDATE {pg_schema}.requests SET {column} = %s WHERE id = %s", (target[2 + n], target[0]))
        assert verify_cli(*args).returncode == 0
        raw.execute(f"DELETE FROM {pg_schema}.requests WHERE request_id = 'r5'")
        r = verify_cli(*args)
        assert r.returncode == 1 and "ledger row of request r5" in r.stderr and "missing: deleted" in r.stderr


@pytest.mark.usefixtures("clean_upstreams")
def test_gateway_postgres_ledger_edit_is_named(pg_schema: str, gateway_factory: Callable[..., Gateway],
                                               upstream: Upstream, anthropic_upstream: Upstream) -> None:
    import psycopg

    cfg = hybrid_config(upstream.url, anthropic_upstream.url,
                        storage={"postgres_dsn": PG_DSN, "postgres_schema": pg_schema})
    gw = gateway_factory(cfg)
    client = gw.openai()
    ids = [client.chat.completions.with_raw_response.create(
        model="remote-only", messages=[{"role": "user", "content": "hi"}], max_tokens=4).headers["x-request-id"]
        for _ in range(2)]
    args = ("--dsn", PG_DSN, "--schema", pg_schema)
    ok = verify_cli(*args)
    assert ok.returncode == 0 and "2 ledger rows match their entries" in ok.stdout, ok.stdout + ok.stderr
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"UPDATE {pg_schema}.requests SET cost_usd = 0, tenant = 'x' WHERE request_id = %s", (ids[1],))
    r = verify_cli(*args)
    assert r.returncode == 1 and f"(request {ids[1]}), audit seq 2, was edited: tenant" in r.stderr, r.stderr
    assert "cost_usd (entry" in r.stderr and ids[0] not in r.stderr


# ---- feedback rows and a wiped log (issue 23, L2) ----------------------------------------------
def _write_with_feedback(store: str, target: str, schema: str) -> None:
    """Five ledger rows and feedback on r2 (given twice: the second replaces the first) and r4."""
    from turnout.ledger.feedback import SQLiteFeedback, make

    async def go() -> None:
        if store == "sqlite":
            ledger: Any = SQLiteLedger(target)
            feedback: Any = SQLiteFeedback(target)
        else:
            from turnout.ledger.postgres import PostgresFeedback, PostgresLedger

            ledger = PostgresLedger(PG_DSN, schema=schema)
            feedback = PostgresFeedback(ledger)
        try:
            await asyncio.gather(*(ledger.record(_row(i)) for i in range(1, 6)))
            for rid, score, comment in (("r2", "up", None), ("r2", 2, "changed my mind"), ("r4", 5, "great")):
                assert await feedback.add(make(rid, score, comment), "acme", "tk_a")
        finally:
            await feedback.close()
            await ledger.close()

    asyncio.run(go())


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_feedback_edits_and_a_wiped_log_are_named_by_verify(store: str, tmp_path: Path, request: Any) -> None:
    if store == "sqlite":
        db = tmp_path / "ledger.sqlite"
        args: tuple[str, ...] = ("--db", str(db))
        raw: Any = sqlite3.connect(db, isolation_level=None)
        _write_with_feedback(store, str(db), "")
        t = {"fb": "feedback", "req": "requests", "entries": "audit_entries", "head": "audit_head"}

        def sql(statement: str, *params: object) -> None:
            raw.execute(statement.replace("%s", "?"), params)

        def drop_triggers() -> None:
            raw.execute("DROP TRIGGER audit_entries_no_update")
            raw.execute("DROP TRIGGER audit_entries_no_delete")
    else:
        psycopg = pytest.importorskip("psycopg")
        schema = request.getfixturevalue("pg_schema")
        args = ("--dsn", PG_DSN, "--schema", schema)
        _write_with_feedback(store, PG_DSN, schema)
        raw = psycopg.connect(PG_DSN, autocommit=True)
        t = {k: f"{schema}.{v}" for k, v in
             {"fb": "feedback", "req": "requests", "entries": "audit_entries", "head": "audit_head"}.items()}

        def sql(statement: str, *params: object) -> None:
            raw.execute(statement, params)

        def drop_triggers() -> None:
            raw.execute(f"DROP TRIGGER audit_entries_append_only ON {schema}.audit_entries")

    ok = verify_cli(*args)
    assert ok.returncode == 0 and "2 feedback rows match their entries" in ok.stdout, ok.stdout + ok.stderr
    for column, value in (("value", 5), ("satisfaction", 1.0), ("comment", "forged"), ("kind", "thumbs"), ("ts", 1.0)):
        sql(f"UPDATE {t['fb']} SET {column} = %s WHERE request_id = 'r2'", value)
        r = verify_cli(*args)
        assert r.returncode == 1 and "(request r2)" in r.stderr and "was edited" in r.stderr, (column, r.stderr)
        _restore = {"value": 2, "satisfaction": 0.25, "comment": "changed my mind", "kind": "rating"}
        if column == "ts":
            break  # the timestamp cannot be put back exactly from here: the row stays edited below
        sql(f"UPDATE {t['fb']} SET {column} = %s WHERE request_id = 'r2'", _restore[column])
        assert verify_cli(*args).returncode == 0, column
    sql(f"DELETE FROM {t['fb']} WHERE request_id = 'r4'")
    sql(f"INSERT INTO {t['fb']} (ts, request_id, kind, value, satisfaction) VALUES (1.0, 'r5', 'thumbs', 1, 1.0)")
    r = verify_cli(*args)
    assert r.returncode == 1
    assert "feedback row of request r4" in r.stderr and "missing: deleted" in r.stderr
    assert "(request r5) has no audit entry" in r.stderr
    # the whole log wiped, head rewound: the rows that remain say it was there
    drop_triggers()
    sql(f"DELETE FROM {t['entries']}")
    sql(f"UPDATE {t['head']} SET last_seq = 0, last_hash = %s WHERE id = 1", "0" * 64)
    r = verify_cli(*args)
    assert r.returncode == 1 and "the audit log is empty but the database holds 5 ledger row(s)" in r.stderr, r.stderr
    sql(f"DELETE FROM {t['fb']}")
    sql(f"DELETE FROM {t['req']}")
    assert verify_cli(*args).returncode == 0  # everything gone: only a saved head can tell (tests/test_audit.py)
    raw.close()
