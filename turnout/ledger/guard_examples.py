"""What the injection guard keeps of flagged traffic, and the labels feedback puts on it.

One row per request the guard flagged or blocked (and, with ``guards.learning.benign_sample``, a
random share of the others): the request's tenant, the guard's verdict and score, the best
window's embedding (384 float32, with the encoder's fingerprint), the n-gram and heuristic scores
a refitted head cannot change. Never the text. ``POST /v1/feedback`` with ``kind: guard`` sets
``label`` (``false_positive``: benign, should pass; ``false_negative``: an attack, should block)
on a row of the caller's own request; ``turnout guards fit --from-traffic`` reads the labelled rows
of one tenant (``turnout.guards.learn``).

Retention: unlabelled rows expire after ``keep_days`` and at most ``max_per_tenant`` stay per
tenant (the oldest go first); labelled rows are the tenant's training labels and stay.

The table ``guard_examples`` lives in the ledger's SQLite file (it joins ``requests`` to check
who made a request). PostgreSQL is not supported yet: with ``storage.postgres_dsn`` nothing is kept.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from turnout import sqlitedb
from turnout.ledger.feedback import owned

GuardLabel = Literal["false_positive", "false_negative"]
DIM = 384

MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_guard_examples", [
        """CREATE TABLE IF NOT EXISTS guard_examples (
            request_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            verdict TEXT NOT NULL,
            score REAL NOT NULL,
            ngram_score REAL NOT NULL,
            heuristic REAL NOT NULL,
            fingerprint TEXT NOT NULL,
            embedding BLOB NOT NULL,
            label TEXT,
            labelled_ts REAL,
            labelled_by TEXT)""",
        "CREATE INDEX IF NOT EXISTS guard_examples_tenant_ts ON guard_examples (tenant, ts)",
    ]),
]


@dataclass(frozen=True)
class KeptWindow:
    request_id: str
    tenant: str
    verdict: str          # blocked | flagged | would_block | sample
    score: float
    ngram_score: float
    heuristic: float
    fingerprint: str
    embedding: bytes      # DIM float32, little-endian
    kind: str = "injection"
    ts: float = 0.0


@dataclass(frozen=True)
class Example:
    """A labelled example: ``attack`` True for a false negative, False for a false positive."""

    request_id: str
    attack: bool
    verdict: str
    score: float
    ngram_score: float
    heuristic: float
    embedding: bytes
    ts: float


class SQLiteGuardExamples:
    def __init__(self, path: str | Path, keep_days: float = 30.0, max_per_tenant: int = 5000) -> None:
        self.path = Path(path)
        self.keep_s = keep_days * 86400
        self.max_per_tenant = max_per_tenant
        self._conn = sqlitedb.connect(self.path)
        sqlitedb.migrate(self._conn, "guard_examples_migrations", MIGRATIONS)
        self._lock = threading.Lock()

    # ---- the guard step writes
    def _keep(self, w: KeptWindow) -> None:
        if len(w.embedding) != DIM * 4:
            raise ValueError(f"an embedding of {len(w.embedding) // 4} floats; {DIM} expected")
        now = w.ts or time.time()
        with self._lock, sqlitedb.immediate(self._conn) as c:
            c.execute("INSERT OR REPLACE INTO guard_examples (request_id, tenant, ts, kind, verdict, score, "
                      "ngram_score, heuristic, fingerprint, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (w.request_id, w.tenant, now, w.kind, w.verdict, w.score, w.ngram_score, w.heuristic,
                       w.fingerprint, w.embedding))
            c.execute("DELETE FROM guard_examples WHERE tenant = ? AND label IS NULL AND ts < ?",
                      (w.tenant, now - self.keep_s))
            c.execute("DELETE FROM guard_examples WHERE request_id IN (SELECT request_id FROM guard_examples "
                      "WHERE tenant = ? AND label IS NULL ORDER BY ts DESC LIMIT -1 OFFSET ?)",
                      (w.tenant, self.max_per_tenant))

    async def keep(self, w: KeptWindow) -> None:
        await asyncio.to_thread(self._keep, w)

    # ---- feedback labels
    def _label(self, request_id: str, tenant: str | None, key_id: str | None, value: GuardLabel,
               by: str) -> Literal["ok", "not_found", "no_example"]:
        with self._lock, sqlitedb.immediate(self._conn) as c:
            row = c.execute("SELECT tenant, key_id FROM requests WHERE request_id = ?", (request_id,)).fetchone()
            if not owned(row, tenant, key_id):
                return "not_found"
            cur = c.execute("UPDATE guard_examples SET label = ?, labelled_ts = ?, labelled_by = ? "
                            "WHERE request_id = ? AND tenant = ?", (value, time.time(), by, request_id, row[0]))
            return "ok" if cur.rowcount else "no_example"

    async def label(self, request_id: str, tenant: str | None, key_id: str | None, value: GuardLabel,
                    by: str = "") -> Literal["ok", "not_found", "no_example"]:
        """Label the kept window of a request of ``tenant`` made by ``key_id`` (None: any of the
        tenant's keys, for its admin; a None tenant: open mode). ``not_found`` for a request that is
        not the caller's to label (another tenant's is indistinguishable from none); ``no_example``
        when the guard kept nothing for it (it neither flagged it nor sampled it)."""
        return await asyncio.to_thread(self._label, request_id, tenant, key_id, value, by)

    # ---- the refit reads
    def examples(self, tenant: str, fingerprint: str | None = None) -> tuple[list[Example], int]:
        """The tenant's labelled examples (oldest first) made with the encoder ``fingerprint``, and
        how many were skipped for another encoder's."""
        rows = self._conn.execute(
            "SELECT request_id, label, verdict, score, ngram_score, heuristic, embedding, ts, fingerprint "
            "FROM guard_examples WHERE tenant = ? AND label IS NOT NULL ORDER BY ts", (tenant,)).fetchall()
        out = [Example(r[0], r[1] == "false_negative", r[2], r[3], r[4], r[5], bytes(r[6]), r[7])
               for r in rows if fingerprint is None or r[8] == fingerprint]
        return out, len(rows) - len(out)

    def tenants(self) -> list[str]:
        return [r[0] for r in self._conn.execute(
            "SELECT DISTINCT tenant FROM guard_examples WHERE label IS NOT NULL ORDER BY tenant")]

    def rows(self, tenant: str) -> list[dict[str, Any]]:
        cur = self._conn.execute("SELECT request_id, verdict, score, label FROM guard_examples WHERE tenant = ? "
                                 "ORDER BY ts", (tenant,))
        return [dict(zip(("request_id", "verdict", "score", "label"), r)) for r in cur]

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        self._conn.close()
