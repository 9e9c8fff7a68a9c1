"""Which ledger the gateway writes: the embedded SQLite file, or PostgreSQL when
``storage.postgres_dsn`` is set. Each comes with its feedback store and a read-only
``query`` for the dashboard's SQL (``turnout.ledger.stats``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.config import GuardLearningConfig, StorageConfig
from turnout.ledger.base import Ledger
from turnout.ledger.stats import Query


@dataclass
class Stores:
    ledger: Ledger  # SQLiteLedger | PostgresLedger
    feedback: Any   # SQLiteFeedback | PostgresFeedback: async add(fb, tenant) -> bool, rows(since), async close()
    query: Query    # read-only SQL over the ledger, "$1" placeholders (turnout.sqlshared)
    dialect: str    # sqlite | postgres
    guard_examples: Any = None  # SQLiteGuardExamples (turnout.ledger.guard_examples); None on PostgreSQL

    async def close(self) -> None:
        if self.guard_examples is not None:
            await self.guard_examples.close()
        await self.feedback.close()
        await self.ledger.close()


def open_stores(storage: StorageConfig, learning: GuardLearningConfig | None = None) -> Stores:
    dsn = storage.postgres_dsn
    if dsn:
        from turnout.ledger.postgres import PostgresFeedback, PostgresLedger

        pg = PostgresLedger(dsn, schema=storage.postgres_schema)
        return Stores(pg, PostgresFeedback(pg), pg.query, "postgres")
    from turnout.ledger.feedback import SQLiteFeedback
    from turnout.ledger.guard_examples import SQLiteGuardExamples
    from turnout.ledger.sqlite import SQLiteLedger
    from turnout.ledger.stats import sqlite_query

    db = Path(storage.sqlite_path)
    ledger = SQLiteLedger(db)
    learning = learning or GuardLearningConfig()
    examples = SQLiteGuardExamples(db, learning.keep_days, learning.max_per_tenant)
    return Stores(ledger, SQLiteFeedback(db), sqlite_query(db), "sqlite", examples)
