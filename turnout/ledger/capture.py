"""The capture store: what the gateway keeps of its own traffic for datasets (issue 26), and its
erasure. What is captured, and when, is decided upstream (``turnout.capture``); this module
only stores, reads and forgets it.

Two tables beside the ledger's ``requests`` (same SQLite file, or the same PostgreSQL schema):

- ``captures``: one row per captured request: tenant, time, the deadline of its retention
  (``expires_ts``), route, function, variant, template hash, episode, attempt, the function's
  check verdict, the engine of record, whether a cascade or a function escalated it, the scope
  (``remote``: the text remote engines were allowed to see, pseudonymized; ``local_ok``: a
  request the guards kept local, scrubbed), the sha256 of the raw input (golden-set exclusion
  and dedupe; never the raw text) and the messages (JSON, as stored);
- ``capture_answers``: each answer an engine gave to it (``answer``: the one the client got;
  ``draft``: a cascade's weak draft that was escalated; ``shadow``: a learned route's shadow
  call of its strong engine, with the judge's verdict), concealed like the messages.

Rows are written off the request path, in batches, by the ledger's capture writer
(``turnout.ledger.capture_writer``) once the request's ledger row has committed: capturing adds no
database round trip to a request. The writer also deletes expired rows, at most once per
:data:`PURGE_EVERY_S`.

Erasure (``turnout data forget``) deletes a tenant's or one request's captured rows, and the
route labels that hold their prompts, and appends an ``erasure`` entry to the audit chain in the
same transaction. Ledger rows stay: they hold no request text (the audit chain commits to them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from turnout import pgdb, sqlitedb
from turnout.ledger.audit import utc_now
from turnout.ledger.audit_store import postgres_append, sqlite_append
from turnout.sqlshared import Args, marks

log = logging.getLogger("turnout.capture")
PURGE_EVERY_S = 60.0
ANSWER_ROLES = ("answer", "draft", "shadow")

_CAPTURE_COLUMNS = ("request_id", "tenant", "ts", "expires_ts", "route", "function", "variant", "template_hash",
                    "episode", "attempt", "function_outcome", "engine", "locality", "escalated", "scope",
                    "input_sha256", "messages")
_ANSWER_COLUMNS = ("request_id", "tenant", "ts", "engine", "locality", "role", "text", "judge", "score")

# Append-only: never edit a migration that has shipped; add a new one.
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_captures", [
        """CREATE TABLE captures (
            request_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            ts REAL NOT NULL,
            expires_ts REAL NOT NULL,
            route TEXT NOT NULL,
            function TEXT,
            variant TEXT,
            template_hash TEXT,
            episode TEXT,
            attempt TEXT,
            function_outcome TEXT,
            engine TEXT,
            locality TEXT,
            escalated INTEGER NOT NULL DEFAULT 0,
            scope TEXT NOT NULL,
            input_sha256 TEXT NOT NULL,
            messages TEXT NOT NULL)""",
        "CREATE INDEX captures_tenant_ts ON captures (tenant, ts)",
        "CREATE INDEX captures_expires ON captures (expires_ts)",
        """CREATE TABLE capture_answers (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            tenant TEXT NOT NULL,
            ts REAL NOT NULL,
            engine TEXT NOT NULL,
            locality TEXT NOT NULL,
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            judge TEXT,
            score REAL)""",
        "CREATE INDEX capture_answers_request ON capture_answers (request_id)",
        "CREATE INDEX capture_answers_tenant ON capture_answers (tenant)",
    ]),
]


def pg_migrations(s: str) -> list[tuple[str, list[str]]]:
    """The PostgreSQL counterpart of :data:`MIGRATIONS` (same names, same columns)."""
    return [
        ("0001_captures", [
            f"""CREATE TABLE {s}.captures (
                request_id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                expires_ts DOUBLE PRECISION NOT NULL,
                route TEXT NOT NULL,
                function TEXT,
                variant TEXT,
                template_hash TEXT,
                episode TEXT,
                attempt TEXT,
                function_outcome TEXT,
                engine TEXT,
                locality TEXT,
                escalated INTEGER NOT NULL DEFAULT 0,
                scope TEXT NOT NULL,
                input_sha256 TEXT NOT NULL,
                messages TEXT NOT NULL)""",
            f"CREATE INDEX captures_tenant_ts ON {s}.captures (tenant, ts)",
            f"CREATE INDEX captures_expires ON {s}.captures (expires_ts)",
            f"""CREATE TABLE {s}.capture_answers (
                id BIGSERIAL PRIMARY KEY,
                request_id TEXT NOT NULL,
                tenant TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                engine TEXT NOT NULL,
                locality TEXT NOT NULL,
                role TEXT NOT NULL,
                text TEXT NOT NULL,
                judge TEXT,
                score DOUBLE PRECISION)""",
            f"CREATE INDEX capture_answers_request ON {s}.capture_answers (request_id)",
            f"CREATE INDEX capture_answers_tenant ON {s}.capture_answers (tenant)",
        ]),
    ]


@dataclass(slots=True)
class CapturedAnswer:
    engine: str
    locality: str
    role: str                      # answer | draft | shadow (ANSWER_ROLES)
    text: str                      # concealed like the request (turnout.capture)
    judge: str | None = None       # shadow: the judge that scored it
    score: float | None = None     # shadow: its score in [0, 1]


@dataclass(slots=True)
class CaptureRow:
    request_id: str
    tenant: str
    ts: float
    expires_ts: float
    route: str
    scope: str                     # remote | local_ok
    input_sha256: str
    messages: str                  # JSON list of {"role", "content"}
    function: str | None = None
    variant: str | None = None
    template_hash: str | None = None
    episode: str | None = None
    attempt: str | None = None
    function_outcome: str | None = None
    engine: str | None = None
    locality: str | None = None
    escalated: int = 0
    answers: list[CapturedAnswer] = field(default_factory=list)

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in _CAPTURE_COLUMNS)

    def answer_values(self) -> list[tuple[Any, ...]]:
        return [(self.request_id, self.tenant, self.ts, a.engine, a.locality, a.role, a.text, a.judge, a.score)
                for a in self.answers]


class PendingCapture(Protocol):
    """A request's capture as the pipeline left it (``turnout.capture.Pending``): its row is made
    on the writer thread, off the event loop."""

    request_id: str

    def row(self) -> CaptureRow: ...

    def conceal(self, text: str) -> str:
        """``text`` (an answer that arrives later) concealed like the request's own answers."""


def finish(pending: Iterable[PendingCapture | None]) -> list[CaptureRow]:
    """The rows of the pending captures; one that fails is logged and skipped, never failing the
    ledger's batch."""
    rows = []
    for p in pending:
        if p is None:
            continue
        try:
            rows.append(p.row())
        except Exception:  # noqa: BLE001 - a capture never costs a ledger row
            log.exception("capture of request %s skipped", p.request_id)
    return rows


# SQL shared by both backends (turnout.sqlshared: $n placeholders; SQLite through sqlitedb.Numbered);
# ``{t}`` is the table prefix: "" in SQLite, "schema." in PostgreSQL.
_INSERT = (f"INSERT INTO {{t}}captures ({', '.join(_CAPTURE_COLUMNS)}) "
           f"VALUES ({marks(len(_CAPTURE_COLUMNS))}) ON CONFLICT (request_id) DO NOTHING")
_INSERT_ANSWER = (f"INSERT INTO {{t}}capture_answers ({', '.join(_ANSWER_COLUMNS)}) "
                  f"VALUES ({marks(len(_ANSWER_COLUMNS))})")
_SCORE = "UPDATE {t}capture_answers SET judge = $1, score = $2 WHERE request_id = $3 AND role = 'answer'"


def add_answer(c: Any, t: str, request_id: str, answer: CapturedAnswer,
               answered_score: float | None = None) -> bool:
    """In the caller's transaction (``c``: a PostgreSQL cursor or a ``sqlitedb.Numbered``): a later
    answer (a shadow call's, with its judge's score) of a captured request, and the judge's score of
    the answer the client got; False when the request was not captured (or was erased since)."""
    row = c.execute(f"SELECT tenant FROM {t}captures WHERE request_id = $1", (request_id,)).fetchone()
    if row is None:
        return False
    c.execute(_INSERT_ANSWER.format(t=t), (request_id, row[0], time.time(), answer.engine, answer.locality,
                                           answer.role, answer.text, answer.judge, answer.score))
    if answered_score is not None:
        c.execute(_SCORE.format(t=t), (answer.judge, answered_score, request_id))
    return True


class Purge:
    """When the writer last deleted expired rows: at most once per :data:`PURGE_EVERY_S`."""

    def __init__(self) -> None:
        self.last = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < PURGE_EVERY_S:
            return False
        self.last = now
        return True


def _unexpired(rows: Sequence[CaptureRow]) -> list[CaptureRow]:
    """A row whose retention ran out before the writer reached it is never stored: the periodic purge
    would only delete it later, and a read in between must not see it either."""
    now = time.time()
    return [r for r in rows if r.expires_ts >= now]


def insert_sqlite(conn: Any, rows: Sequence[CaptureRow], purge: Purge | None = None) -> None:
    """Insert captured rows in the caller's transaction (the capture writer's), and delete expired ones when due."""
    n = sqlitedb.Numbered(conn)
    rows = _unexpired(rows)
    if rows:
        n.executemany(_INSERT.format(t=""), [r.values() for r in rows])
        n.executemany(_INSERT_ANSWER.format(t=""), [a for r in rows for a in r.answer_values()])
    if purge is not None and purge.due():
        _delete_expired(n, "", time.time())


def insert_postgres(cur: Any, schema: str, rows: Sequence[CaptureRow], purge: Purge | None = None) -> None:
    t = f"{schema}."
    rows = _unexpired(rows)
    if rows:
        cur.executemany(_INSERT.format(t=t), [r.values() for r in rows])
        answers = [a for r in rows for a in r.answer_values()]
        if answers:
            cur.executemany(_INSERT_ANSWER.format(t=t), answers)
    if purge is not None and purge.due():
        _delete_expired(cur, t, time.time())


def _delete_expired(c: Any, t: str, now: float) -> int:
    c.execute(f"DELETE FROM {t}capture_answers WHERE request_id IN "
              f"(SELECT request_id FROM {t}captures WHERE expires_ts < $1)", (now,))
    cur = c.execute(f"DELETE FROM {t}captures WHERE expires_ts < $1", (now,))
    return int(cur.rowcount or 0) if cur is not None else 0


@dataclass(frozen=True, slots=True)
class Erased:
    captures: int
    answers: int
    labels: int
    audit_seq: int

    def __str__(self) -> str:
        return (f"erased {self.captures} captured request(s), {self.answers} answer(s) and {self.labels} route "
                f"label(s); audit entry {self.audit_seq}")


def erasure_payload(tenant: str | None, request_id: str | None, by: str, counts: tuple[int, int, int]) \
        -> dict[str, Any]:
    """The audit entry of an erasure: what was asked and how much went; never any text."""
    payload: dict[str, Any] = {"event": "erasure", "scope": "request" if request_id else "tenant", "tenant": tenant,
                               "captures": counts[0], "answers": counts[1], "labels": counts[2], "by": by}
    if request_id is not None:
        payload["request_id"] = request_id
    return payload


def _where(tenant: str | None, request_id: str | None) -> tuple[str, Args]:
    if tenant is None and request_id is None:
        raise ValueError("erasure needs a tenant or a request id")
    a = Args()
    parts = ([f"tenant = {a(tenant)}"] if tenant is not None else []) + \
        ([f"request_id = {a(request_id)}"] if request_id is not None else [])
    return " AND ".join(parts), a


# The columns a dataset build reads: the captured row, and the request's feedback when there is one.
_SELECT = ("SELECT c.request_id, c.tenant, c.ts, c.route, c.function, c.variant, c.template_hash, c.episode, "
           "c.attempt, c.function_outcome, c.engine, c.locality, c.escalated, c.scope, c.input_sha256, c.messages, "
           "f.satisfaction FROM {t}captures c LEFT JOIN {t}feedback f ON f.request_id = c.request_id "
           "WHERE c.expires_ts >= {now}")
_ROW_KEYS = ("request_id", "tenant", "ts", "route", "function", "variant", "template_hash", "episode", "attempt",
             "function_outcome", "engine", "locality", "escalated", "scope", "input_sha256", "messages",
             "satisfaction")


def _without_feedback(sql: str, t: str) -> str:
    return sql.replace("f.satisfaction", "NULL").replace(f" LEFT JOIN {t}feedback f ON f.request_id = c.request_id", "")


def _selection(t: str, *, tenants: Sequence[str] | None, routes: Sequence[str] | None,
               functions: Sequence[str] | None, since: float | None, until: float | None,
               now: float) -> tuple[str, Args]:
    a = Args()
    sql = _SELECT.format(t=t, now=a(now))
    for column, values in (("tenant", tenants), ("route", routes), ("function", functions)):
        if values:
            sql += f" AND c.{column} IN ({', '.join(a(v) for v in values)})"
    if since is not None:
        sql += f" AND c.ts >= {a(since)}"
    if until is not None:
        sql += f" AND c.ts < {a(until)}"
    return sql + " ORDER BY c.ts, c.request_id", a


def _attach(rows: Iterable[Sequence[Any]], answers: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    out = [dict(zip(_ROW_KEYS, r, strict=True)) for r in rows]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for a in answers:
        by_id.setdefault(a[0], []).append(dict(zip(("engine", "locality", "role", "text", "judge", "score"),
                                                   a[1:], strict=True)))
    for r in out:
        r["answers"] = by_id.get(r["request_id"], [])
    return out


class SQLiteCaptures:
    """The capture tables in the gateway's SQLite file: reads for datasets, later answers
    (shadow calls), erasure. New captures are written by the ledger's capture writer."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = sqlitedb.connect(self.path)
        sqlitedb.migrate(self._conn, "capture_migrations", MIGRATIONS)
        self._lock = threading.Lock()

    def add_answer(self, request_id: str, answer: CapturedAnswer, answered_score: float | None = None) -> bool:
        """Add a later answer to a captured request (:func:`add_answer`); False when it was not captured."""
        with self._lock, sqlitedb.immediate(self._conn) as c:
            return add_answer(sqlitedb.Numbered(c), "", request_id, answer, answered_score)

    def forget(self, *, tenant: str | None = None, request_id: str | None = None, by: str = "operator") -> Erased:
        """Delete the captured rows of a tenant or of one request (and the route labels holding their
        prompts), and record the erasure in the audit chain, in one transaction."""
        where, params = _where(tenant, request_id)
        with self._lock, sqlitedb.immediate(self._conn) as c:
            n = sqlitedb.Numbered(c)
            answers = n.execute(f"DELETE FROM capture_answers WHERE {where}", params).rowcount
            captures = n.execute(f"DELETE FROM captures WHERE {where}", params).rowcount
            labels = 0
            if c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'route_labels'").fetchone():
                labels = n.execute(f"DELETE FROM route_labels WHERE {where}", params).rowcount
            counts = (captures, answers, labels)
            rec = sqlite_append(c, erasure_payload(tenant, request_id, by, counts), utc_now())
        return Erased(*counts, rec.seq)

    def purge_expired(self, now: float | None = None) -> int:
        with self._lock, sqlitedb.immediate(self._conn) as c:
            return _delete_expired(sqlitedb.Numbered(c), "", time.time() if now is None else now)

    def rows(self, *, tenants: Sequence[str] | None = None, routes: Sequence[str] | None = None,
             functions: Sequence[str] | None = None, since: float | None = None, until: float | None = None,
             now: float | None = None) -> list[dict[str, Any]]:
        """The captured requests selected (unexpired), oldest first, each with its ``answers`` and the
        ``satisfaction`` of its feedback (None: none)."""
        sql, params = _selection("", tenants=tenants, routes=routes, functions=functions, since=since,
                                 until=until, now=time.time() if now is None else now)
        has_feedback = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'feedback'").fetchone()
        if not has_feedback:  # captures without a ledger beside them (a copied file): no feedback to join
            sql = _without_feedback(sql, "")
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                n = sqlitedb.Numbered(self._conn)
                rows = n.execute(sql, params).fetchall()
                ids = [r[0] for r in rows]
                answers: list[Any] = []
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    answers += n.execute(
                        "SELECT request_id, engine, locality, role, text, judge, score FROM capture_answers "
                        f"WHERE request_id IN ({marks(len(chunk))}) ORDER BY id", chunk).fetchall()
            finally:
                self._conn.execute("COMMIT")
        return _attach(rows, answers)

    def close(self) -> None:
        self._conn.close()


class PostgresCaptures:
    """:class:`SQLiteCaptures` over PostgreSQL (tables in ``schema``, beside the ledger's)."""

    def __init__(self, dsn: str, schema: str = "public") -> None:
        from turnout.ledger.audit_store import PostgresAuditLog

        PostgresAuditLog(dsn, schema=schema).close()  # validates the schema name; the erasure entries' tables
        self.schema = schema
        self.pg = pgdb.Connection(dsn, search_path=schema)
        self.pg.run(lambda cur: pgdb.migrate(cur, schema, "capture_migrations", pg_migrations(schema)))

    def add_answer(self, request_id: str, answer: CapturedAnswer, answered_score: float | None = None) -> bool:
        with self.pg.transaction() as cur:
            return add_answer(cur, f"{self.schema}.", request_id, answer, answered_score)

    def forget(self, *, tenant: str | None = None, request_id: str | None = None, by: str = "operator") -> Erased:
        s = self.schema
        where, params = _where(tenant, request_id)
        with self.pg.transaction() as cur:  # not retried: the audit append must not happen twice
            answers = cur.execute(f"DELETE FROM {s}.capture_answers WHERE {where}", params).rowcount
            captures = cur.execute(f"DELETE FROM {s}.captures WHERE {where}", params).rowcount
            labels = 0
            cur.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = "
                        "'route_labels'", (s,))
            if cur.fetchone():
                labels = cur.execute(f"DELETE FROM {s}.route_labels WHERE {where}", params).rowcount
            counts = (captures, answers, labels)
            rec = postgres_append(cur, erasure_payload(tenant, request_id, by, counts), utc_now(), schema=s)
        return Erased(*counts, rec.seq)

    def purge_expired(self, now: float | None = None) -> int:
        return self.pg.run(lambda cur: _delete_expired(cur, f"{self.schema}.", time.time() if now is None else now))

    def rows(self, *, tenants: Sequence[str] | None = None, routes: Sequence[str] | None = None,
             functions: Sequence[str] | None = None, since: float | None = None, until: float | None = None,
             now: float | None = None) -> list[dict[str, Any]]:
        s = self.schema
        sql, params = _selection(f"{s}.", tenants=tenants, routes=routes, functions=functions, since=since,
                                 until=until, now=time.time() if now is None else now)

        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'feedback'",
                        (s,))
            query = sql if cur.fetchone() else _without_feedback(sql, f"{s}.")
            rows = cur.execute(query, params).fetchall()
            ids = [r[0] for r in rows]
            if not ids:
                return []
            answers = cur.execute(f"SELECT request_id, engine, locality, role, text, judge, score FROM "
                                  f"{s}.capture_answers WHERE request_id = ANY($1) ORDER BY id", (ids,)).fetchall()
            return _attach(rows, answers)

        return self.pg.run(read)

    def close(self) -> None:
        self.pg.close()


def open_captures(*, db: str | Path | None = None, dsn: str | None = None, schema: str = "public") \
        -> SQLiteCaptures | PostgresCaptures:
    """PostgreSQL when ``dsn`` is given, else the SQLite file ``db`` (default ``$TURNOUT_DB`` or
    ``.turnout/turnout.sqlite``)."""
    if dsn:
        return PostgresCaptures(dsn, schema)
    return SQLiteCaptures(db if db is not None else sqlitedb.default_db_path())


def input_digest(messages: Iterable[tuple[str, str]]) -> str:
    """sha256 of a request's raw messages, (role, text) each: what a plain route call is known by
    for the golden-set exclusion and dedupe, without its text being stored."""
    import hashlib

    h = hashlib.sha256()
    for role, text in messages:
        h.update(role.encode() + b"\x00" + text.encode() + b"\x01")
    return h.hexdigest()


def variables_digest(variables: Any) -> str:
    """sha256 of a function call's variables (canonical JSON): a golden item with the same
    variables has the same digest, whatever the variant rendered."""
    import hashlib

    from turnout.ledger.audit import canonical_json

    return hashlib.sha256(canonical_json(variables).encode()).hexdigest()
