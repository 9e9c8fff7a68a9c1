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

Feedback entries (``event: feedback``) are checked the same way against the ``feedback``
table: each row must match the latest feedback entry of its request (``row_sha256``; older
entries: kind, value, satisfaction and the comment's hash), and each request's latest
feedback entry must have its row.

Database triggers refuse UPDATE and DELETE on the entries, which stops accidents; someone
who can drop the triggers can rewrite history, and the chain is what shows it — except for a
consistent rewrite, or entries cut from the end with the head rewound to match (a wiped log
is the extreme case). Against those, keep a *saved head* elsewhere (``turnout audit head``
prints ``SEQ:HASH``; a ticket, a log shipper, another host) and verify against it
(``verify(expect=...)``, ``turnout audit verify --expect-head``): the chain must still reach
that entry with that hash. Without one, an empty log is a failure where the ledger or the
feedback table still holds rows, and a missing head row or table is named, never a pass.

This module is the chain and its checks, with no database code; the SQLite and PostgreSQL
tables are in ``turnout.ledger.audit_store``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

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
    bad_rows: tuple[str, ...] = ()   # one line per ledger or feedback row edited, deleted or inserted
    feedback_rows: int | None = None  # feedback rows checked against their entries; None: no feedback table
    saved_head: str | None = None    # the saved head (SEQ:HASH) the chain was checked to extend

    def __str__(self) -> str:
        if self.first_bad_seq is not None:
            return f"BROKEN at seq {self.first_bad_seq}: {self.problem}"
        if self.problem is not None:
            return f"BROKEN: {self.problem}"
        if self.bad_rows:
            shown = list(self.bad_rows[:20])
            if len(self.bad_rows) > 20:
                shown.append(f"... and {len(self.bad_rows) - 20} more")
            return (f"BROKEN: {len(self.bad_rows)} ledger row(s) do not match the audit chain "
                    f"(chain of {self.entries} entries intact)\n" + "\n".join(f"  {line}" for line in shown))
        text = f"ok: {self.entries} entries, chain intact, head {self.entries}:{self.head_hash}"
        if self.entries == 0:
            text += (" (an empty log: nothing recorded yet, or wiped together with every row; "
                     "--expect-head tells the two apart)")
        if self.saved_head is not None:
            text += f"; extends the saved head {self.saved_head[:80]}"
        if self.rows is not None:
            text += f"; {self.rows} ledger rows match their entries"
            if self.legacy_rows:
                text += (f" ({self.legacy_rows} written before row hashing: checked on tenant, route, rule, "
                         "reason, engine, cost, HTTP status and findings only)")
        if self.feedback_rows is not None:
            text += f"; {self.feedback_rows} feedback rows match their entries"
        return text


@dataclass(slots=True)
class _Row:
    seq: int
    time: str
    prev_hash: str
    payload_text: str
    hash: str
    payload: dict[str, Any] = field(default_factory=dict)


def parse_head(text: str) -> tuple[int, str]:
    """A saved head: ``SEQ:HASH`` (what ``turnout audit head`` prints) or the JSON object of
    ``turnout audit head --json``. ValueError says what is accepted."""
    text = text.strip()
    try:
        if text.startswith("{"):
            obj = json.loads(text)
            seq, h = obj["seq"], obj["hash"]
        else:
            seq_text, h = text.split(":", 1)
            seq = int(seq_text)
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"a saved head is SEQ:HASH (from `turnout audit head`), got {text[:80]!r}") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not re.fullmatch(r"[0-9a-f]{64}", str(h)):
        raise ValueError(f"a saved head is SEQ:HASH with SEQ >= 0 and a 64-digit hex HASH, got {text[:80]!r}")
    return seq, str(h)


def verify_rows(rows: Iterable[Sequence[Any]], head: tuple[int, str] | None,
                payloads: dict[str, tuple[int, dict[str, Any]]] | None = None,
                feedback: dict[str, tuple[int, dict[str, Any]]] | None = None,
                expect: tuple[int, str] | None = None) -> Verification:
    """Check a chain given its rows ordered by seq, as (seq, time, prev_hash, payload_text, hash),
    against its head row (None: the row is missing, a failure) and, with ``expect``, a saved
    head (seq, hash) that the chain must still reach. With ``payloads``, also fill it: request
    id -> (seq, payload) of each request's row entry; with ``feedback``, request id -> the
    latest feedback entry naming it."""
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
        if expect is not None and seq == expect[0] and stored != expect[1]:
            what = (f"entry {seq} has hash {stored[:12]}..., the saved head says {expect[1][:12]}...: "
                    f"the chain was rewritten at or before entry {seq}")
            return Verification(False, count, seq, what)
        if isinstance(payload, dict) and isinstance(payload.get("request_id"), str):
            if payloads is not None and "event" not in payload:  # a request's row entry
                payloads[payload["request_id"]] = (seq, payload)
            elif feedback is not None and payload.get("event") == "feedback":  # the latest one counts
                feedback[payload["request_id"]] = (seq, payload)
        prev, expected, count = stored, expected + 1, count + 1
    if head is None:
        return Verification(False, count, None, "the audit_head row is missing (deleted): the end of the log "
                                                "cannot be checked")
    last_seq, last_hash = head
    if last_seq > count:
        what = f"entries {count + 1}..{last_seq} are missing from the end (the head records {last_seq})"
        return Verification(False, count, count + 1, what)
    if last_seq < count or last_hash != prev:
        what = f"the head records entry {last_seq} with hash {last_hash[:12]}..., the chain ends otherwise"
        return Verification(False, count, last_seq or 1, what)
    if expect is not None and expect[0] == 0 and expect[1] != GENESIS:
        return Verification(False, count, None, "the saved head is entry 0 with a hash other than the genesis "
                                                "hash (64 zeros): not a head of this log")
    if expect is not None and expect[0] > count:
        what = (f"the chain ends at entry {count}, the saved head is entry {expect[0]}: entries were cut from "
                "the end and the head rewound" + (" (the whole log wiped)" if count == 0 else ""))
        return Verification(False, count, count + 1, what)
    saved = f"{expect[0]}:{expect[1]}" if expect is not None else None
    return Verification(True, count, head_hash=prev, saved_head=saved)


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
                 ledger_rows: Iterable[Mapping[str, Any]], chain: Verification,
                 feedback: dict[str, tuple[int, dict[str, Any]]] | None = None,
                 feedback_rows: Iterable[Mapping[str, Any]] | None = None) -> Verification:
    """Match ledger rows (dicts, ``SELECT *`` of ``requests``) with the entries of an intact
    chain: every row must have an entry whose ``row_sha256`` it still hashes to (legacy entries:
    whose repeated fields it still holds), and every entry a row. With ``feedback_rows``
    (``SELECT *`` of ``feedback``) the same for feedback and its latest entry per request. An
    empty chain while rows exist is a wiped log."""
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
    fb_rows: int | None = None
    if feedback_rows is not None:
        fb_rows = 0
        entries = dict(feedback or {})
        for row in feedback_rows:
            fb_rows += 1
            rid = row.get("request_id")
            name = f"feedback row id {row.get('id')} (request {rid})"
            found = entries.pop(rid, None) if isinstance(rid, str) else None
            if found is None:
                bad.append(f"{name} has no audit entry: inserted outside the gateway")
                continue
            seq, payload = found
            if _feedback_differs(payload, row):
                bad.append(f"{name}, audit seq {seq}, was edited: it no longer matches its latest feedback entry")
        for rid, (seq, _) in sorted(entries.items(), key=lambda kv: kv[1][0]):
            bad.append(f"feedback row of request {rid} (audit seq {seq}) is missing: deleted")
    problem = None
    if chain.entries == 0 and (rows or fb_rows):
        problem = (f"the audit log is empty but the database holds {rows} ledger row(s) and {fb_rows or 0} "
                   "feedback row(s): the log was wiped (or the rows written with the audit log off)")
    return Verification(not bad and problem is None, chain.entries, problem=problem, head_hash=chain.head_hash,
                        rows=rows, legacy_rows=legacy, bad_rows=tuple(bad), feedback_rows=fb_rows,
                        saved_head=chain.saved_head)


def _feedback_differs(payload: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    stored = {k: v for k, v in row.items() if k != "id"}
    if ROW_HASH in payload:
        return bool(row_sha256(stored) != payload[ROW_HASH])
    comment = row.get("comment")
    digest = None if comment is None else hashlib.sha256(str(comment).encode()).hexdigest()
    return (_differs(payload.get("kind"), row.get("kind")) or _differs(payload.get("value"), row.get("value"))
            or _differs(payload.get("satisfaction"), row.get("satisfaction"))
            or payload.get("comment_sha256") != digest)


class NoAuditLog(ValueError):
    """The database (or schema) has no audit log at all: none of its tables."""


AUDIT_TABLES = ("audit_migrations", "audit_entries", "audit_head")


def missing_tables(present: set[str]) -> Verification | None:
    """None when every audit table is there; NoAuditLog when none is; else a failure naming the missing."""
    missing = [t for t in AUDIT_TABLES if t not in present]
    if len(missing) == len(AUDIT_TABLES):
        raise NoAuditLog("no audit log here (none of its tables exists): check --db, --dsn or --schema")
    if not missing:
        return None
    return Verification(False, 0, problem=f"table {', '.join(missing)} is missing (dropped): the log cannot be "
                                          "checked, and what it held is gone")
