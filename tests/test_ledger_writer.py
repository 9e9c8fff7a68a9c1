"""The ledger's group commit (turnout.ledger.writer): many concurrent ``record`` calls share a
transaction, each returns only once its row is committed, and a batch that fails fails every
``record`` of it, never one whose row is not there. Real SQLite file, real writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from turnout.ledger.base import LedgerRow
from turnout.ledger.sqlite import SQLiteLedger


def row(request_id: str) -> LedgerRow:
    return LedgerRow(ts=time.time(), request_id=request_id, tenant="t", alias="auto", status="ok", http_status=200)


def stored(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM requests")}


def test_concurrent_records_return_once_committed_and_a_failed_batch_fails_each_of_its_records(
        tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"

    async def main() -> tuple[list[str], list[str]]:
        ledger = SQLiteLedger(db, max_batch=8)  # small batches: several in one rush
        try:
            await ledger.record(row("taken"))
            # 200 at once, some reusing "taken" (a UNIQUE request_id): their batches cannot commit
            ids = [f"r{i}" if i % 50 else "taken" for i in range(1, 201)]
            results = await asyncio.gather(*(ledger.record(row(i)) for i in ids), return_exceptions=True)
            ok = [i for i, r in zip(ids, results, strict=True) if r is None]
            failed = [i for i, r in zip(ids, results, strict=True) if isinstance(r, sqlite3.IntegrityError)]
            assert len(ok) + len(failed) == len(ids), [r for r in results if r is not None and r not in failed]
            # each acknowledged row is readable at once, from another connection
            assert set(ok) <= stored(db)
            return ok, failed
        finally:
            await ledger.close()

    ok, failed = asyncio.run(main())
    rows = stored(db)
    assert "taken" in failed and len(ok) > 0  # the duplicates failed, the other batches committed
    assert set(ok) | {"taken"} == rows  # what was acknowledged is stored; nothing else is
    assert not (set(failed) - {"taken"}) & rows  # a failed record's row is not there
    assert failed.count("taken") == 4 and len(failed) <= 4 * 8  # the duplicates, and what shared their batches
