"""Feedback on answers, one per request, normalised to a satisfaction in 0..1.

Scores on the wire (``POST /v1/feedback``)::

    "up" / "down"     thumbs          -> satisfaction 1.0 / 0.0
    1, 2, 3, 4, 5     rating (int)    -> satisfaction (rating - 1) / 4: 0, .25, .5, .75, 1

Thumbs are strings and ratings integers, so ``1`` is never ambiguous; ``true``, ``-1``,
``4.5`` and ``"5"`` are refused. A request has at most one feedback: a later one replaces
the earlier (people change their minds), so satisfaction counts each request once.

The table lives next to the ``requests`` table: migration ``0003_feedback`` of
``turnout.ledger.sqlite`` for the embedded store, ``turnout.ledger.postgres`` for scale-out.
Feedback carries its tenant and its key through its request: it is stored only on a request
the caller's key made (in ``keys`` mode; in ``open`` mode on any request), so neither another
tenant nor another key of the same tenant can write or overwrite it. For them the request does
not exist (404, as for an unknown id): one user's request ids are not another's to probe.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout import sqlitedb
from turnout.ledger.audit import ROW_HASH, row_sha256, utc_now
from turnout.ledger.audit_store import SQLITE_MIGRATIONS as AUDIT_MIGRATIONS
from turnout.ledger.audit_store import sqlite_append

MAX_COMMENT_CHARS = 2000
THUMBS = {"up": 1, "down": 0}


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    kind: str            # thumbs | rating
    value: int           # thumbs: 1 up, 0 down; rating: 1..5
    satisfaction: float  # 0..1
    comment: str | None = None
    ts: float = 0.0


def normalise(score: str | int) -> tuple[str, int, float]:
    """(kind, value, satisfaction) for a wire score; ValueError names what is accepted."""
    if isinstance(score, str):
        if score not in THUMBS:
            raise ValueError(f"a thumbs score is 'up' or 'down', got {score!r}")
        v = THUMBS[score]
        return "thumbs", v, float(v)
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise ValueError(f"a rating is an integer from 1 to 5, got {score!r}")
    return "rating", score, (score - 1) / 4


def make(request_id: str, score: str | int, comment: str | None = None, ts: float | None = None) -> Feedback:
    kind, value, sat = normalise(score)
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise ValueError(f"comment is {len(comment)} characters; at most {MAX_COMMENT_CHARS}")
    return Feedback(request_id, kind, value, sat, comment, time.time() if ts is None else ts)


def comment_sha256(comment: str | None) -> str | None:
    return None if comment is None else hashlib.sha256(comment.encode()).hexdigest()


def stored_row(fb: Feedback) -> dict[str, Any]:
    """The ``feedback`` row as the upsert stores it (every column but the database's ``id``)."""
    return {"ts": fb.ts, "request_id": fb.request_id, "kind": fb.kind, "value": fb.value,
            "satisfaction": fb.satisfaction, "comment": fb.comment}


def audit_payload(fb: Feedback, tenant: str) -> dict[str, Any]:
    """The audit entry committed with a feedback row: feedback moves satisfaction figures and, on a
    learned route, becomes a training label, so it is tamper-evident like the requests. The free-text
    comment is kept as its hash (the chain cannot be erased); ``row_sha256`` commits to the whole
    stored row (``turnout.ledger.audit.row_sha256``), which ``turnout audit verify`` checks."""
    return {"event": "feedback", "request_id": fb.request_id, "tenant": tenant, "kind": fb.kind, "value": fb.value,
            "satisfaction": fb.satisfaction, "comment_sha256": comment_sha256(fb.comment),
            ROW_HASH: row_sha256(stored_row(fb))}


def owned(row: tuple[Any, ...] | None, tenant: str | None, key_id: str | None) -> bool:
    """Whether a request's (tenant, key_id) lets this caller give feedback on it: its tenant, and
    the key that made it (a caller without a key, in open mode: any)."""
    if row is None or (tenant is not None and row[0] != tenant):
        return False
    return key_id is None or row[1] == key_id


# Shared by the SQLite and PostgreSQL stores (numbered placeholders, turnout.sqlshared; only the table differs).
UPSERT = ("INSERT INTO {t} (ts, request_id, kind, value, satisfaction, comment) VALUES ($1, $2, $3, $4, $5, $6) "
          "ON CONFLICT (request_id) DO UPDATE SET ts = excluded.ts, kind = excluded.kind, value = excluded.value, "
          "satisfaction = excluded.satisfaction, comment = excluded.comment")


class SQLiteFeedback:
    """Feedback in the gateway's SQLite file. ``add`` returns False for an unknown request."""

    def __init__(self, path: str | Path) -> None:
        from turnout.ledger.sqlite import MIGRATIONS

        self.path = Path(path)
        self._conn = sqlitedb.connect(self.path)
        sqlitedb.migrate(self._conn, "ledger_migrations", MIGRATIONS)
        sqlitedb.migrate(self._conn, "audit_migrations", AUDIT_MIGRATIONS)
        self._lock = threading.Lock()

    def _add(self, fb: Feedback, tenant: str | None, key_id: str | None) -> bool:
        with self._lock, sqlitedb.immediate(self._conn) as c:
            row = c.execute("SELECT tenant, key_id FROM requests WHERE request_id = ?", (fb.request_id,)).fetchone()
            if not owned(row, tenant, key_id):
                return False
            sqlitedb.Numbered(c).execute(UPSERT.format(t="feedback"),
                                         (fb.ts, fb.request_id, fb.kind, fb.value, fb.satisfaction, fb.comment))
            sqlite_append(c, audit_payload(fb, row[0]), utc_now())  # in the same transaction
            return True

    async def add(self, fb: Feedback, tenant: str | None, key_id: str | None = None) -> bool:
        """Store ``fb`` on a request of ``tenant`` made by ``key_id`` (None: any tenant's, any
        key's); False when there is no such request (another tenant's or another key's request
        is indistinguishable from none)."""
        return await asyncio.to_thread(self._add, fb, tenant, key_id)

    def rows(self, since: float | None = None) -> list[dict[str, Any]]:
        return read_feedback(self.path, since)

    async def close(self) -> None:
        self._conn.close()


def read_feedback(path: str | Path, since: float | None = None) -> list[dict[str, Any]]:
    """Feedback on the requests made since a Unix time (all when None), with each request's route."""
    conn = sqlitedb.connect(path)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'feedback'").fetchone():
            return []  # a ledger written before feedback existed
        sql = ("SELECT f.request_id, r.alias, r.engine, f.kind, f.value, f.satisfaction, f.ts FROM feedback f "
               "JOIN requests r ON r.request_id = f.request_id")
        cur = conn.execute(sql + " WHERE r.ts >= ?", (since,)) if since is not None else conn.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]
    finally:
        conn.close()
