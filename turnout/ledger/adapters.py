"""The adapter registry (issue 26 item 5): which LoRA adapters exist for which function, which one is
on canary, which serves, and every step of their life in the audit chain.

One table, ``adapters``, beside the ledger (the SQLite file, or the PostgreSQL schema), with its own
append-only migrations (``adapter_migrations``)::

    id               the first 16 hex digits of the manifest's sha256 (an adapter is its files)
    function         the function whose golden set gated it (its canary is a variant of it)
    path             the adapter folder (manifest.json, adapter.gguf, peft/)
    status           registered -> refused | canary -> promoted | rolled_back; promoted -> retired
    evaluation       the manifest's evaluation (JSON): golden, validation, checks, gate verdict
    engine, variant, from_variant, share
                     the canary: variant ``variant`` (a copy of ``from_variant`` answering through
                     ``engine``) on ``share`` of the function's new episodes; share 1 once promoted

Every change of status and the change itself commit in one transaction with an audit entry
``{"event": "adapter", "action": ..., "adapter": id, "function": ..., "manifest_sha256": ..., "by": ...}``,
so ``turnout audit verify`` covers the registry's history. The gateway reads the table with the
ledger's read-only query (``turnout.functions.canary``); only the CLI writes it (an operator with the
database, no API key).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout import pgdb, sqlitedb
from turnout.ledger.audit import utc_now
from turnout.ledger.audit_store import postgres_append, sqlite_append

STATUSES = ("registered", "refused", "canary", "promoted", "rolled_back", "retired")
LIVE = ("canary", "promoted")  # the statuses the gateway serves
COLUMNS = ("id", "function", "path", "manifest_sha256", "base_sha256", "status", "evaluation", "engine", "variant",
           "from_variant", "share", "created_ts", "updated_ts", "canary_ts", "reason")

MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_adapters", [
        """CREATE TABLE adapters (
            id TEXT PRIMARY KEY,
            function TEXT NOT NULL,
            path TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            base_sha256 TEXT,
            status TEXT NOT NULL,
            evaluation TEXT,
            engine TEXT,
            variant TEXT,
            from_variant TEXT,
            share REAL,
            created_ts REAL NOT NULL,
            updated_ts REAL NOT NULL,
            canary_ts REAL,
            reason TEXT)""",
        "CREATE INDEX adapters_function ON adapters (function, status)",
    ]),
]


def pg_migrations(s: str) -> list[tuple[str, list[str]]]:
    return [
        ("0001_adapters", [
            f"""CREATE TABLE {s}.adapters (
                id TEXT PRIMARY KEY,
                function TEXT NOT NULL,
                path TEXT NOT NULL,
                manifest_sha256 TEXT NOT NULL,
                base_sha256 TEXT,
                status TEXT NOT NULL,
                evaluation TEXT,
                engine TEXT,
                variant TEXT,
                from_variant TEXT,
                share DOUBLE PRECISION,
                created_ts DOUBLE PRECISION NOT NULL,
                updated_ts DOUBLE PRECISION NOT NULL,
                canary_ts DOUBLE PRECISION,
                reason TEXT)""",
            f"CREATE INDEX adapters_function ON {s}.adapters (function, status)",
        ]),
    ]


class RegistryError(ValueError):
    """A step the registry refuses (unknown adapter, a transition its status does not allow)."""


@dataclass(frozen=True)
class AdapterRow:
    id: str
    function: str
    path: str
    manifest_sha256: str
    base_sha256: str | None
    status: str
    evaluation: dict[str, Any] | None
    engine: str | None
    variant: str | None
    from_variant: str | None
    share: float | None
    created_ts: float
    updated_ts: float
    canary_ts: float | None
    reason: str | None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> AdapterRow:
        d = dict(zip(COLUMNS, row, strict=True))
        d["evaluation"] = json.loads(d["evaluation"]) if d["evaluation"] else None
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


# which transitions each action allows: action -> (statuses it starts from, status it leaves)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "refused": (("registered", "refused"), "refused"),
    "canary": (("registered",), "canary"),
    "promoted": (("canary",), "promoted"),
    "rolled_back": (("canary", "promoted"), "rolled_back"),
    "retired": (("promoted",), "retired"),
}

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM {{t}}adapters"


def _audit_payload(row: AdapterRow, action: str, by: str, reason: str | None,
                   extra: dict[str, Any] | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"event": "adapter", "action": action, "adapter": row.id, "function": row.function,
                               "manifest_sha256": row.manifest_sha256, "by": by}
    if reason:
        payload["reason"] = reason[:500]
    if extra:
        payload.update(extra)
    return payload


class _Registry:
    """What both backends share; each supplies ``_tx(fn)`` (``fn(cursor-like, table prefix, append)``
    in one write transaction) and ``_read(sql, params)``."""

    def _tx(self, fn: Callable[[Any, str, Callable[[dict[str, Any]], int]], Any]) -> Any:
        raise NotImplementedError

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def register(self, *, adapter_id: str, function: str, path: str, manifest_sha256: str, base_sha256: str | None,
                 evaluation: dict[str, Any] | None, by: str) -> AdapterRow:
        """Add an adapter (status ``registered``), or return it as it is when it is already there."""
        now = time.time()

        def run(c: Any, t: str, append: Callable[[dict[str, Any]], int]) -> AdapterRow:
            found = c.execute(_SELECT.format(t=t) + " WHERE id = $1", (adapter_id,)).fetchone()
            if found is not None:
                row = AdapterRow.of(tuple(found))
                if row.function != function:
                    raise RegistryError(f"adapter {adapter_id} is registered for function {row.function}, "
                                        f"not {function}")
                return row
            values = (adapter_id, function, path, manifest_sha256, base_sha256, "registered",
                      json.dumps(evaluation, sort_keys=True) if evaluation is not None else None,
                      None, None, None, None, now, now, None, None)
            c.execute(f"INSERT INTO {t}adapters ({', '.join(COLUMNS)}) VALUES "
                      f"({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))})", values)
            row = AdapterRow.of(values)
            append(_audit_payload(row, "registered", by, None, {"path": path}))
            return row

        result: AdapterRow = self._tx(run)
        return result

    def transition(self, adapter_id: str, action: str, *, by: str, reason: str | None = None,
                   canary: tuple[str, str, str, float] | None = None,
                   audit: dict[str, Any] | None = None) -> AdapterRow:
        """Move an adapter to the status of ``action`` (:data:`TRANSITIONS`), with its audit entry, in one
        transaction. ``canary`` (engine, variant, from_variant, share) starts a canary; at most one adapter
        of a function is on canary, and promoting one retires the function's promoted adapter."""
        if action not in TRANSITIONS:
            raise RegistryError(f"unknown action {action!r}")
        allowed, status = TRANSITIONS[action]
        now = time.time()

        def run(c: Any, t: str, append: Callable[[dict[str, Any]], int]) -> AdapterRow:
            found = c.execute(_SELECT.format(t=t) + " WHERE id = $1", (adapter_id,)).fetchone()
            if found is None:
                raise RegistryError(f"no adapter {adapter_id} in the registry (turnout adapters list)")
            row = AdapterRow.of(tuple(found))
            if row.status not in allowed:
                raise RegistryError(f"adapter {adapter_id} is {row.status}; {action} needs it "
                                    f"{' or '.join(allowed)}")
            sets = "status = $1, updated_ts = $2, reason = $3"
            params: list[Any] = [status, now, reason]
            if action == "canary":
                assert canary is not None, "a canary needs its engine, variant, from_variant and share"
                busy = c.execute(f"SELECT id FROM {t}adapters WHERE function = $1 AND status = 'canary' AND id <> $2",
                                 (row.function, adapter_id)).fetchone()
                if busy is not None:
                    raise RegistryError(f"function {row.function} already has adapter {busy[0]} on canary; promote "
                                        "or roll it back first")
                sets += ", engine = $4, variant = $5, from_variant = $6, share = $7, canary_ts = $8"
                params += [*canary, now]
            elif action == "promoted":
                sets += ", share = $4"
                params.append(1.0)
                for (old,) in c.execute(f"SELECT id FROM {t}adapters WHERE function = $1 AND status = 'promoted'",
                                        (row.function,)).fetchall():
                    c.execute(f"UPDATE {t}adapters SET status = 'retired', updated_ts = $1 WHERE id = $2", (now, old))
                    append({"event": "adapter", "action": "retired", "adapter": old, "function": row.function,
                            "by": by, "reason": f"replaced by {adapter_id}"})
            elif action == "rolled_back":
                sets += ", share = $4"
                params.append(0.0)
            params.append(adapter_id)
            c.execute(f"UPDATE {t}adapters SET {sets} WHERE id = ${len(params)}", tuple(params))
            done = AdapterRow.of(tuple(c.execute(_SELECT.format(t=t) + " WHERE id = $1", (adapter_id,)).fetchone()))
            extra = dict(audit or {})
            if canary is not None:
                extra.update({"engine": canary[0], "variant": canary[1], "from_variant": canary[2],
                              "share": canary[3]})
            append(_audit_payload(done, action, by, reason, extra))
            return done

        result: AdapterRow = self._tx(run)
        return result

    def get(self, adapter_id: str) -> AdapterRow:
        rows = self._read(_SELECT.format(t="") + " WHERE id = $1", [adapter_id])
        if not rows:
            prefix = self._read(_SELECT.format(t="") + " WHERE id LIKE $1", [adapter_id + "%"]) \
                if adapter_id and adapter_id.isalnum() else []
            if len(prefix) != 1:
                raise RegistryError(f"no adapter {adapter_id} in the registry (turnout adapters list)")
            rows = prefix
        return AdapterRow.of(tuple(rows[0]))

    def list(self, function: str | None = None, status: str | None = None) -> list[AdapterRow]:
        sql, params = _SELECT.format(t="") + " WHERE 1 = 1", []
        if function is not None:
            params.append(function)
            sql += f" AND function = ${len(params)}"
        if status is not None:
            params.append(status)
            sql += f" AND status = ${len(params)}"
        return [AdapterRow.of(tuple(r)) for r in self._read(sql + " ORDER BY created_ts, id", params)]

    def previous(self, function: str, exclude: str | None = None) -> AdapterRow | None:
        """The adapter a new one is compared with in its changelog: the function's promoted one, else its
        newest registered before it."""
        rows = [r for r in self.list(function) if r.id != exclude and r.evaluation is not None]
        promoted = [r for r in rows if r.status == "promoted"]
        found = promoted or rows
        return found[-1] if found else None

    def close(self) -> None:
        raise NotImplementedError


class SQLiteAdapters(_Registry):
    def __init__(self, path: str | Path) -> None:
        from turnout.ledger.audit_store import SQLiteAuditLog

        self.path = Path(path)
        SQLiteAuditLog(self.path).close()  # the audit chain's tables, where the registry's steps go
        self._conn = sqlitedb.connect(self.path)
        sqlitedb.migrate(self._conn, "adapter_migrations", MIGRATIONS)
        self._lock = threading.Lock()

    def _tx(self, fn: Callable[[Any, str, Callable[[dict[str, Any]], int]], Any]) -> Any:
        with self._lock, sqlitedb.immediate(self._conn) as c:
            return fn(sqlitedb.Numbered(c), "", lambda payload: sqlite_append(c, payload, utc_now()).seq)

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(sqlitedb.Numbered(self._conn).execute(sql, params).fetchall())

    def close(self) -> None:
        self._conn.close()


class PostgresAdapters(_Registry):
    def __init__(self, dsn: str, schema: str = "public") -> None:
        from turnout.ledger.audit_store import PostgresAuditLog

        PostgresAuditLog(dsn, schema=schema).close()  # validates the schema name; the audit chain's tables
        self.schema = schema
        self.pg = pgdb.Connection(dsn, search_path=schema)
        self.pg.run(lambda cur: pgdb.migrate(cur, schema, "adapter_migrations", pg_migrations(schema)))

    def _tx(self, fn: Callable[[Any, str, Callable[[dict[str, Any]], int]], Any]) -> Any:
        s = self.schema
        with self.pg.transaction() as cur:  # not retried: the audit append must not happen twice
            return fn(cur, f"{s}.", lambda payload: postgres_append(cur, payload, utc_now(), schema=s).seq)

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self.pg.run(lambda cur: list(cur.execute(sql, tuple(params)).fetchall()))

    def close(self) -> None:
        self.pg.close()


def open_adapters(*, db: str | Path | None = None, dsn: str | None = None,
                  schema: str = "public") -> SQLiteAdapters | PostgresAdapters:
    """PostgreSQL when ``dsn`` is given, else the SQLite file ``db`` (default ``$TURNOUT_DB`` or
    ``.turnout/turnout.sqlite``)."""
    if dsn:
        return PostgresAdapters(dsn, schema)
    return SQLiteAdapters(db if db is not None else sqlitedb.default_db_path())
