"""Append-only, hash-chained audit log: one entry per routed request.

Each entry holds ``seq`` (1, 2, 3, ...), ``time`` (UTC, ISO 8601), ``prev_hash`` (the
previous entry's hash; 64 zeros for the first), the ``payload`` (canonical JSON: request
id, tenant, route, reason, engine, cost, and guard finding *types* only — never the text
that was found) and ``hash``::

    hash = sha256(prev_hash + canonical_json({"seq": seq, "time": time, "payload": payload}))

``verify()`` walks the chain in ``seq`` order and names the first entry that is wrong:
a gap in ``seq`` (removed entry), a ``prev_hash`` that is not the previous entry's hash
(an entry before it removed, reordered or re-hashed after an edit), or a hash that does
not match the entry's content (edited). A one-row ``audit_head`` table, updated in the
same transaction as each append, catches entries removed from the end.

Each ledger entry also commits to its request's full ledger row: ``row_sha256`` in the
payload is :func:`row_sha256` of every stored column of the row (see there). Where the store
has a ``requests`` table, ``verify()`` reads it in the same snapshot and names each row that
was edited (its hash no longer matches), deleted (an entry without its row) or inserted
(a row without an entry). Entries written before row hashing (no ``row_sha256``) are
*legacy*: their rows are checked only on the fields the entry repeats (tenant, route,
rule, reason, engine, cost, HTTP status, findings), and the result says how many.

Database triggers refuse UPDATE and DELETE on the entries, which stops accidents; someone
who can drop the triggers can rewrite history, and the chain is what shows it (anchor the
head hash elsewhere, e.g. in a ticket or a log shipper, to catch a full rewrite too).

Two stores behind one interface: :class:`SqliteAuditLog` (a table in the gateway's
SQLite file, WAL, ``BEGIN IMMEDIATE`` so appends from threads and processes serialise)
and :class:`PostgresAuditLog` (psycopg 3; appends serialise on a row lock of the head).
Methods are synchronous; the pipeline calls ``await log.aappend(event)``, which runs the
append in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import orjson

GENESIS = "0" * 64
_LABEL = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, UTF-8 (orjson: it runs once per request on the ledger thread)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


def entry_hash(prev_hash: str, seq: int, time: str, payload: Mapping[str, Any]) -> str:
    doc = canonical_json({"seq": seq, "time": time, "payload": payload})
    return hashlib.sha256((prev_hash + doc).encode("utf-8")).hexdigest()


ROW_HASH = "row_sha256"
# payload field -> ledger column, for the fields an entry repeats from its row
_REPEATED = {"tenant": "tenant", "route": "alias", "rule": "rule", "reason": "reason", "engine": "engine",
             "cost_usd": "cost_usd", "status": "http_status"}


def _canonical_value(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN: SQLite stores it as NULL
        return None
    if isinstance(v, (bool, int, float)):  # one number type: SQLite and PostgreSQL return ints or floats by column
        return float(v)
    return v


def row_sha256(row: Mapping[str, Any]) -> str:
    """The canonical hash of a ledger row: sha256 of the canonical JSON of its columns, every
    number as a float, NULLs and the database's own ``id`` left out. Leaving NULLs out keeps old
    rows' hashes valid when a migration adds a nullable column (a new column must be nullable
    without a default, or old rows will read as edited)."""
    doc = {k: c for k, v in row.items() if k != "id" and (c := _canonical_value(v)) is not None}
    return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What one request did. ``findings`` are guard finding types ("pii", "secret", ...)."""

    request_id: str
    route: str
    reason: str
    engine: str | None = None
    cost_usd: float = 0.0
    findings: Sequence[str] = ()
    tenant: str | None = None

    def payload(self) -> dict[str, Any]:
        for label in self.findings:
            if not isinstance(label, str) or not _LABEL.match(label):
                raise ValueError(f"audit findings must be finding types like 'pii' or 'secret', "
                                 f"never the matched text; got {label!r}")
        d = asdict(self)
        d["findings"] = sorted(set(self.findings))
        return d


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    time: str
    prev_hash: str
    payload: dict[str, Any]
    hash: str


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int  # entries checked
    first_bad_seq: int | None = None
    problem: str | None = None
    head_hash: str | None = None
    rows: int | None = None          # ledger rows checked against their entries; None: no ledger table
    legacy_rows: int = 0             # of which only the repeated fields could be checked (no row hash)
    bad_rows: tuple[str, ...] = ()   # one line per ledger row edited, deleted or inserted

    def __str__(self) -> str:
        if self.first_bad_seq is not None:
            return f"BROKEN at seq {self.first_bad_seq}: {self.problem}"
        if self.bad_rows:
            shown = list(self.bad_rows[:20])
            if len(self.bad_rows) > 20:
                shown.append(f"... and {len(self.bad_rows) - 20} more")
            return (f"BROKEN: {len(self.bad_rows)} ledger row(s) do not match the audit chain "
                    f"(chain of {self.entries} entries intact)\n" + "\n".join(f"  {line}" for line in shown))
        text = f"ok: {self.entries} entries, chain intact, head {self.head_hash}"
        if self.rows is not None:
            text += f"; {self.rows} ledger rows match their entries"
            if self.legacy_rows:
                text += (f" ({self.legacy_rows} written before row hashing: checked on tenant, route, rule, "
                         "reason, engine, cost, HTTP status and findings only)")
        return text


@dataclass(slots=True)
class _Row:
    seq: int
    time: str
    prev_hash: str
    payload_text: str
    hash: str
    payload: dict[str, Any] = field(default_factory=dict)


def verify_rows(rows: Iterable[Sequence[Any]], head: tuple[int, str] | None,
                payloads: dict[str, tuple[int, dict[str, Any]]] | None = None) -> Verification:
    """Check a chain given its rows ordered by seq, as (seq, time, prev_hash, payload_text, hash).
    With ``payloads``, also fill it: request id -> (seq, payload) of each entry that names one."""
    expected, prev, count = 1, GENESIS, 0
    for seq, time, prev_hash, payload_text, stored in rows:
        if seq != expected:
            what = f"entry {expected} is missing (the next entry present is {seq})"
            return Verification(False, count, expected, what)
        if prev_hash != prev:
            what = (f"prev_hash {prev_hash[:12]}... is not the hash of entry {seq - 1} ({prev[:12]}...): "
                    "an entry was removed, reordered or edited before it")
            return Verification(False, count, seq, what)
        try:
            payload = json.loads(payload_text)
            actual = entry_hash(prev_hash, seq, time, payload)
        except (ValueError, TypeError) as exc:
            return Verification(False, count, seq, f"payload is not valid JSON ({exc}): edited")
        if actual != stored:
            return Verification(False, count, seq, "content does not match its hash: the entry was edited")
        if (payloads is not None and isinstance(payload, dict) and isinstance(payload.get("request_id"), str)
                and "event" not in payload):  # a request's row entry; feedback and task events name an event
            payloads[payload["request_id"]] = (seq, payload)
        prev, expected, count = stored, expected + 1, count + 1
    if head is not None:
        last_seq, last_hash = head
        if last_seq > count:
            what = f"entries {count + 1}..{last_seq} are missing from the end (the head records {last_seq})"
            return Verification(False, count, count + 1, what)
        if last_seq < count or last_hash != prev:
            what = f"the head records entry {last_seq} with hash {last_hash[:12]}..., the chain ends otherwise"
            return Verification(False, count, last_seq or 1, what)
    return Verification(True, count, head_hash=prev)


def _differs(a: Any, b: Any) -> bool:
    return bool(_canonical_value(a) != _canonical_value(b))


def _repeated_diffs(payload: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    """The fields an entry repeats that its ledger row no longer holds, as 'name (entry x, row y)'."""
    out = []
    for field_name, column in _REPEATED.items():
        if field_name in payload and column in row and _differs(payload[field_name], row[column]):
            out.append(f"{column} (entry {payload[field_name]!r}, row {row[column]!r})")
    if "findings" in payload and "labels" in row:
        labels = sorted(filter(None, str(row["labels"] or "").split(",")))
        if labels != sorted(payload["findings"]):
            out.append(f"labels (entry {','.join(payload['findings'])!r}, row {row['labels']!r})")
    return out


def check_ledger(payloads: dict[str, tuple[int, dict[str, Any]]],
                 ledger_rows: Iterable[Mapping[str, Any]], chain: Verification) -> Verification:
    """Match ledger rows (dicts, ``SELECT *`` of ``requests``) with the entries of an intact
    chain: every row must have an entry whose ``row_sha256`` it still hashes to (legacy entries:
    whose repeated fields it still holds), and every entry a row."""
    bad: list[str] = []
    rows = legacy = 0
    for row in ledger_rows:
        rows += 1
        rid = row.get("request_id")
        name = f"ledger row id {row.get('id')} (request {rid})"
        found = payloads.pop(rid, None) if isinstance(rid, str) else None
        if found is None:
            bad.append(f"{name} has no audit entry: inserted outside the gateway (or written with the audit log off)")
            continue
        seq, payload = found
        diffs = _repeated_diffs(payload, row)
        if ROW_HASH not in payload:
            legacy += 1
            if diffs:
                bad.append(f"{name}, audit seq {seq}, was edited: {'; '.join(diffs)}")
        elif row_sha256(row) != payload[ROW_HASH]:
            what = "; ".join(diffs) if diffs else ("a field the entry does not repeat (tokens, status, latency, "
                                                   "labels, key, ...) changed")
            bad.append(f"{name}, audit seq {seq}, was edited: {what}")
    for rid, (seq, _) in sorted(payloads.items(), key=lambda kv: kv[1][0]):
        bad.append(f"ledger row of request {rid} (audit seq {seq}) is missing: deleted")
    return Verification(not bad, chain.entries, head_hash=chain.head_hash, rows=rows, legacy_rows=legacy,
                        bad_rows=tuple(bad))


class AuditLog(ABC):
    """The interface: append, verify, tail. Implementations serialise appends themselves."""

    def append(self, event: AuditEvent | Mapping[str, Any], *, time: str | None = None) -> AuditRecord:
        payload = event.payload() if isinstance(event, AuditEvent) else dict(event)
        canonical_json(payload)  # fail early (NaN, non-JSON types), before taking the lock
        return self._append(payload, time or utc_now())

    async def aappend(self, event: AuditEvent | Mapping[str, Any]) -> AuditRecord:
        return await asyncio.to_thread(self.append, event)

    @abstractmethod
    def _append(self, payload: dict[str, Any], time: str) -> AuditRecord: ...

    @abstractmethod
    def verify(self) -> Verification: ...

    @abstractmethod
    def tail(self, n: int = 10) -> list[AuditRecord]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(seq: int, time: str, prev_hash: str, payload_text: str, h: str) -> AuditRecord:
    return AuditRecord(seq, time, prev_hash, json.loads(payload_text), h)


# --- SQLite -----------------------------------------------------------------------------------

SQLITE_MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_entries_and_head", [
        """CREATE TABLE audit_entries (
               seq INTEGER PRIMARY KEY,
               time TEXT NOT NULL,
               prev_hash TEXT NOT NULL,
               payload TEXT NOT NULL,
               hash TEXT NOT NULL)""",
        """CREATE TABLE audit_head (
               id INTEGER PRIMARY KEY CHECK (id = 1),
               last_seq INTEGER NOT NULL,
               last_hash TEXT NOT NULL)""",
        f"INSERT INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, '{GENESIS}')",
    ]),
    ("0002_append_only_triggers", [
        """CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries
           BEGIN SELECT RAISE(ABORT, 'audit_entries is append-only'); END""",
        """CREATE TRIGGER audit_entries_no_delete BEFORE DELETE ON audit_entries
           BEGIN SELECT RAISE(ABORT, 'audit_entries is append-only'); END""",
    ]),
]


def sqlite_append(c: Any, payload: dict[str, Any], time: str) -> AuditRecord:
    """Append one entry using ``c``, inside a write transaction the caller holds (the
    ledger writer uses this to commit a request's row and its audit entry together)."""
    last_seq, prev = c.execute("SELECT last_seq, last_hash FROM audit_head WHERE id = 1").fetchone()
    seq = last_seq + 1
    h = entry_hash(prev, seq, time, payload)
    c.execute("INSERT INTO audit_entries (seq, time, prev_hash, payload, hash) VALUES (?, ?, ?, ?, ?)",
              (seq, time, prev, canonical_json(payload), h))
    c.execute("UPDATE audit_head SET last_seq = ?, last_hash = ? WHERE id = 1", (seq, h))
    return AuditRecord(seq, time, prev, payload, h)


class SqliteAuditLog(AuditLog):
    def __init__(self, path: str | Path | None = None) -> None:
        from turnout import sqlitedb as sqlite

        self.path = Path(path) if path is not None else sqlite.default_db_path()
        self._sqlite = sqlite
        self._conn = sqlite.connect(self.path)
        self._lock = threading.Lock()
        sqlite.migrate(self._conn, "audit_migrations", SQLITE_MIGRATIONS)

    def _append(self, payload: dict[str, Any], time: str) -> AuditRecord:
        with self._lock, self._sqlite.immediate(self._conn) as c:
            return sqlite_append(c, payload, time)

    def verify(self) -> Verification:
        with self._lock:
            # one read transaction: a consistent snapshot even while others append (WAL)
            self._conn.execute("BEGIN")
            try:
                head = self._conn.execute("SELECT last_seq, last_hash FROM audit_head WHERE id = 1").fetchone()
                rows = self._conn.execute(
                    "SELECT seq, time, prev_hash, payload, hash FROM audit_entries ORDER BY seq")
                payloads: dict[str, tuple[int, dict[str, Any]]] = {}
                chain = verify_rows(rows, tuple(head) if head else None, payloads)
                has_ledger = self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'").fetchone()
                if not chain.ok or not has_ledger:
                    return chain
                cur = self._conn.execute("SELECT * FROM requests ORDER BY id")
                names = [d[0] for d in cur.description]
                return check_ledger(payloads, (dict(zip(names, r, strict=True)) for r in cur), chain)
            finally:
                self._conn.execute("COMMIT")

    def tail(self, n: int = 10) -> list[AuditRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT seq, time, prev_hash, payload, hash FROM audit_entries "
                                      "ORDER BY seq DESC LIMIT ?", (n,)).fetchall()
        return [_record(*r) for r in reversed(rows)]

    def close(self) -> None:
        self._conn.close()


# --- PostgreSQL -------------------------------------------------------------------------------

def _pg_migrations(schema: str) -> list[tuple[str, list[str]]]:
    s = schema
    return [
        ("0001_entries_and_head", [
            f"""CREATE TABLE {s}.audit_entries (
                   seq BIGINT PRIMARY KEY,
                   time TEXT NOT NULL,
                   prev_hash TEXT NOT NULL,
                   payload TEXT NOT NULL,
                   hash TEXT NOT NULL)""",
            f"""CREATE TABLE {s}.audit_head (
                   id INT PRIMARY KEY CHECK (id = 1),
                   last_seq BIGINT NOT NULL,
                   last_hash TEXT NOT NULL)""",
            f"INSERT INTO {s}.audit_head (id, last_seq, last_hash) VALUES (1, 0, '{GENESIS}')",
        ]),
        ("0002_append_only_triggers", [
            f"""CREATE FUNCTION {s}.audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'audit_entries is append-only'; END $$""",
            f"""CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON {s}.audit_entries
                FOR EACH ROW EXECUTE FUNCTION {s}.audit_append_only()""",
        ]),
    ]


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_append(cur: Any, payload: dict[str, Any], time: str, *, schema: str = "public") -> AuditRecord:
    """Append one entry using the psycopg cursor ``cur``, inside a transaction the caller
    holds (the PostgreSQL ledger commits a request's row and its audit entry together)."""
    if not _IDENT.match(schema):
        raise ValueError(f"schema must be a plain lower-case identifier, got {schema!r}")
    s = schema
    # the row lock on the single head row serialises appenders across connections and processes
    cur.execute(f"SELECT last_seq, last_hash FROM {s}.audit_head WHERE id = 1 FOR UPDATE")
    row = cur.fetchone()
    assert row is not None, "audit_head has no row: the migration did not run"
    seq, prev = row[0] + 1, row[1]
    h = entry_hash(prev, seq, time, payload)
    cur.execute(f"INSERT INTO {s}.audit_entries (seq, time, prev_hash, payload, hash) "
                "VALUES (%s, %s, %s, %s, %s)", (seq, time, prev, canonical_json(payload), h))
    cur.execute(f"UPDATE {s}.audit_head SET last_seq = %s, last_hash = %s WHERE id = 1", (seq, h))
    return AuditRecord(seq, time, prev, payload, h)


class PostgresAuditLog(AuditLog):
    """The same log in PostgreSQL (``pip install 'psycopg[binary]'``), tables in ``schema``."""

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        import psycopg

        if not _IDENT.match(schema):
            raise ValueError(f"schema must be a plain lower-case identifier, got {schema!r}")
        self.schema = schema
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._lock = threading.Lock()
        self._migrate()

    def _migrate(self) -> None:
        from turnout import pgdb

        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            pgdb.migrate(cur, self.schema, "audit_migrations", _pg_migrations(self.schema))

    def _append(self, payload: dict[str, Any], time: str) -> AuditRecord:
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            return postgres_append(cur, payload, time, schema=self.schema)

    def verify(self) -> Verification:
        s = self.schema
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute(f"SELECT last_seq, last_hash FROM {s}.audit_head WHERE id = 1")
            head = cur.fetchone()
            cur.execute(f"SELECT seq, time, prev_hash, payload, hash FROM {s}.audit_entries ORDER BY seq")
            payloads: dict[str, tuple[int, dict[str, Any]]] = {}
            chain = verify_rows(cur, (head[0], head[1]) if head else None, payloads)
            cur.execute("SELECT to_regclass(%s)", (f"{s}.requests",))
            found = cur.fetchone()
            if not chain.ok or found is None or found[0] is None:
                return chain
            cur.execute(f"SELECT * FROM {s}.requests ORDER BY id")
            names = [d.name for d in cur.description or ()]
            return check_ledger(payloads, (dict(zip(names, r, strict=True)) for r in cur), chain)

    def tail(self, n: int = 10) -> list[AuditRecord]:
        s = self.schema
        with self._lock, self._conn.cursor() as cur:
            cur.execute(f"SELECT seq, time, prev_hash, payload, hash FROM {s}.audit_entries "
                        "ORDER BY seq DESC LIMIT %s", (n,))
            rows = cur.fetchall()
        return [_record(*r) for r in reversed(rows)]

    def close(self) -> None:
        self._conn.close()


def open_audit_log(*, db: str | Path | None = None, dsn: str | None = None, schema: str = "public") -> AuditLog:
    """PostgreSQL when ``dsn`` is given, else SQLite at ``db`` (default ``$TURNOUT_DB`` or
    ``.turnout/turnout.sqlite``)."""
    if dsn:
        return PostgresAuditLog(dsn, schema=schema)
    return SqliteAuditLog(db)
