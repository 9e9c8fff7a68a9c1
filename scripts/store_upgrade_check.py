"""Every store's data, written by one checkout's code and read back by another's: that a database
made by an older turnout opens and upgrades without losing rows.

    PYTHONPATH=/path/to/old python scripts/store_upgrade_check.py make DIR [DSN SCHEMA]
    PYTHONPATH=/path/to/new python scripts/store_upgrade_check.py check DIR [DSN SCHEMA]

``make`` writes one row through each SQLite store into DIR/turnout.sqlite (and each PostgreSQL
store into SCHEMA, which must not exist yet); ``check`` opens every store with the other code
(so its migrations run), reads the rows back, writes one more, and prints each store's recorded
migrations. Exit 1 with the store's name when something is missing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TS = 1_700_000_000.0


def _embed(texts: list[str]) -> np.ndarray:
    return np.ones((len(texts), 4), dtype=np.float32)


def _row(rid: str) -> Any:
    from turnout.ledger.base import LedgerRow

    return LedgerRow(ts=time.time(), request_id=rid, tenant="acme", alias="auto", status="ok", http_status=200,
                     engine="local", locality="local", cost_usd=0.001)


def _label(prompt: str) -> Any:
    from turnout.ledger.labels import Label

    return Label("acme", "auto", prompt, "local", "frontier", "shadow", "judge", 1.0, 1.0, ts=TS)


def _stores(db: Path, dsn: str | None, schema: str) -> dict[str, Any]:
    from turnout.governance.key_store import PostgresKeyStore, SQLiteKeyStore
    from turnout.governance.limits import SQLiteLimiter
    from turnout.governance.sessions import Sessions
    from turnout.ledger.audit_store import PostgresAuditLog, SQLiteAuditLog
    from turnout.ledger.feedback import SQLiteFeedback
    from turnout.ledger.guard_examples import SQLiteGuardExamples
    from turnout.ledger.labels import PostgresLabels, SQLiteLabels
    from turnout.ledger.sqlite import SQLiteLedger
    from turnout.retrieval import SQLiteChunks, VectorStore
    from turnout.tasks.store import PostgresTaskStore, SQLiteTaskStore

    keys = SQLiteKeyStore(db)
    out: dict[str, Any] = {
        "sqlite ledger": SQLiteLedger(db), "sqlite feedback": SQLiteFeedback(db), "sqlite labels": SQLiteLabels(db),
        "sqlite guard examples": SQLiteGuardExamples(db), "sqlite keys": keys, "sqlite sessions": Sessions(keys),
        "sqlite limits": SQLiteLimiter(db), "sqlite chunks": VectorStore(SQLiteChunks(db), _embed),
        "sqlite tasks": SQLiteTaskStore(db), "sqlite audit": SQLiteAuditLog(db),
    }
    if dsn:
        from turnout.ledger.postgres import PostgresFeedback, PostgresLedger
        from turnout.retrieval_pg import PostgresChunks

        pkeys = PostgresKeyStore(dsn, schema=schema)
        ledger = PostgresLedger(dsn, schema=schema)
        out |= {
            "pg ledger": ledger, "pg feedback": PostgresFeedback(ledger), "pg labels": PostgresLabels(dsn, schema),
            "pg keys": pkeys, "pg sessions": Sessions(pkeys),
            "pg chunks": VectorStore(PostgresChunks(dsn, schema=schema), _embed),
            "pg tasks": PostgresTaskStore(dsn, schema=schema), "pg audit": PostgresAuditLog(dsn, schema=schema),
        }
    return out


async def _write(s: dict[str, Any], tag: str) -> None:
    from turnout.ledger.feedback import make
    from turnout.ledger.guard_examples import KeptWindow

    for side in ("sqlite", "pg"):
        if f"{side} ledger" not in s:
            continue
        await s[f"{side} ledger"].record(_row(f"req-{side}-{tag}"))
        assert await s[f"{side} feedback"].add(make(f"req-{side}-{tag}", 1), "acme")
        await s[f"{side} labels"].add(_label(f"p-{tag}"))
        key = s[f"{side} keys"].create("acme", roles=["user"])
        s[f"{side} sessions"].open(key.key, key.plaintext, 600)
        s[f"{side} chunks"].add("docs", [{"id": f"d-{tag}", "text": f"text {tag}"}], tenant="acme")
        tasks = s[f"{side} tasks"]
        tid = tasks.create("acme", None, f"goal {tag}", {}, [], None, 0.5, None)
        tasks.park(tid, "acme", 1, "s1", "send_email", {"to": "x"}, "r", "w", time.time() + 600)
        s[f"{side} audit"].append({"kind": "check", "tag": tag})
    await s["sqlite guard examples"].keep(KeptWindow(f"req-sqlite-{tag}", "acme", "flagged", 0.9, 0.5, 0.1, "fp",
                                                     b"\0" * 4 * 384, ts=time.time()))
    from turnout.governance.keys import Limits

    res = await s["sqlite limits"].check_and_reserve(f"key-{tag}", Limits(rpm=100), tokens_estimate=1,
                                                     cost_estimate=0.0)
    await s["sqlite limits"].settle(res, actual_tokens=1, actual_cost=0.0)


async def _close(s: dict[str, Any]) -> None:
    for name, store in s.items():
        if name in ("sqlite sessions", "pg sessions", "pg feedback"):  # their stores' connections
            continue
        r = store.close()
        if asyncio.iscoroutine(r):
            await r


def _check(s: dict[str, Any]) -> list[str]:
    bad = []
    for side in ("sqlite", "pg"):
        if f"{side} ledger" not in s:
            continue
        got = {
            "ledger": len(s[f"{side} ledger"].rows()) == 2,
            "feedback": len(s[f"{side} feedback"].rows()) == 2,
            "labels": [r["prompt"] for r in s[f"{side} labels"].rows("auto")] == ["p-old", "p-new"],
            "keys": len(s[f"{side} keys"].list(tenant="acme")) == 2,
            "chunks": s[f"{side} chunks"].stats("docs", tenant="acme")["documents"] == 2,
            "tasks": len(s[f"{side} tasks"].tasks("acme")) == 2 and len(s[f"{side} tasks"].gates("acme")) == 2,
            "audit": s[f"{side} audit"].verify().ok and [r.payload.get("tag") for r in s[f"{side} audit"].tail(50)
                                                          if r.payload.get("kind") == "check"] == ["old", "new"],
        }
        bad += [f"{side} {k}" for k, ok in got.items() if not ok]
    return bad


def _migrations(db: Path, dsn: str | None, schema: str) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%migrations' ORDER BY name"):
        print("sqlite", table, [r[0] for r in conn.execute(f"SELECT name FROM {table} ORDER BY name")])
    conn.close()
    if dsn:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as pg:
            for (table,) in pg.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                                       "AND table_name LIKE %s ORDER BY 1", (schema, "%migrations")).fetchall():
                print("pg", table, [r[0] for r in pg.execute(f"SELECT name FROM {schema}.{table} ORDER BY name")])


async def main(argv: list[str]) -> int:
    mode, folder = argv[0], Path(argv[1])
    dsn, schema = (argv[2], argv[3]) if len(argv) > 3 else (None, "public")
    db = folder / "turnout.sqlite"
    stores = _stores(db, dsn, schema)
    try:
        await _write(stores, "old" if mode == "make" else "new")
        bad = _check(stores) if mode == "check" else []
    finally:
        await _close(stores)
    _migrations(db, dsn, schema)
    if bad:
        print("missing or wrong after the upgrade:", ", ".join(bad))
        return 1
    print(f"{mode}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
