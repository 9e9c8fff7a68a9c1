"""Durable task state (tables ``tasks_*``): tasks, their steps, approval gates, progress events,
irreversible tool calls (by idempotency key) and the step cache, in the gateway's SQLite file
(:class:`SQLiteTaskStore`) or PostgreSQL (:class:`PostgresTaskStore`); :class:`TaskTables` holds
the SQL once, in the numbered placeholders both databases read (``turnout.sqlshared``); each
backend has its own DDL, as named migrations. Every replica that shares the database sees the same state; a lease
(``lease_owner``, ``lease_until``) lets one replica at a time run a task, taken with one UPDATE
so two replicas cannot both win it.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import orjson

from turnout import pgdb, sqlitedb
from turnout.sqlshared import Args, marks

TERMINAL = ("succeeded", "failed", "cancelled")
RUNNABLE = ("queued", "running")  # a running task whose lease lapsed is picked up again

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks_tasks (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_id TEXT, goal TEXT NOT NULL, inputs TEXT NOT NULL,
    tools TEXT NOT NULL, sensitivity TEXT, state TEXT NOT NULL, plan TEXT, plan_version INTEGER NOT NULL DEFAULT 0,
    replans INTEGER NOT NULL DEFAULT 0, notes TEXT NOT NULL DEFAULT '[]', result TEXT, error TEXT,
    cost_usd REAL NOT NULL DEFAULT 0, saved_usd REAL NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL,
    lease_owner TEXT, lease_until REAL, cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_tasks_state ON tasks_tasks(state, lease_until);
CREATE INDEX IF NOT EXISTS tasks_tasks_tenant ON tasks_tasks(tenant, created);
CREATE TABLE IF NOT EXISTS tasks_steps (
    task_id TEXT NOT NULL, plan_version INTEGER NOT NULL, step_id TEXT NOT NULL, kind TEXT NOT NULL,
    route TEXT, engine TEXT, locality TEXT, request_id TEXT, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0, latency_ms REAL,
    cached INTEGER NOT NULL DEFAULT 0, saved_usd REAL NOT NULL DEFAULT 0, status TEXT NOT NULL, result TEXT,
    error TEXT, ts REAL NOT NULL, PRIMARY KEY (task_id, plan_version, step_id)
);
CREATE TABLE IF NOT EXISTS tasks_gates (
    id TEXT PRIMARY KEY, task_id TEXT NOT NULL, tenant TEXT NOT NULL, plan_version INTEGER NOT NULL,
    step_id TEXT NOT NULL, tool TEXT NOT NULL, arguments TEXT NOT NULL, reason TEXT, why TEXT,
    state TEXT NOT NULL, deadline REAL NOT NULL, created REAL NOT NULL, decided_by TEXT, decided_at REAL,
    decision_reason TEXT, edited TEXT, UNIQUE (task_id, plan_version, step_id)
);
CREATE INDEX IF NOT EXISTS tasks_gates_state ON tasks_gates(state, tenant);
CREATE TABLE IF NOT EXISTS tasks_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL, data TEXT
);
CREATE INDEX IF NOT EXISTS tasks_events_task ON tasks_events(task_id, seq);
CREATE TABLE IF NOT EXISTS tasks_tool_calls (
    idempotency_key TEXT PRIMARY KEY, task_id TEXT NOT NULL, tool TEXT NOT NULL, arguments TEXT NOT NULL,
    state TEXT NOT NULL, result TEXT, attempts INTEGER NOT NULL DEFAULT 0, ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks_step_cache (
    key TEXT PRIMARY KEY, tenant TEXT NOT NULL, result TEXT NOT NULL, engine TEXT, cost_usd REAL NOT NULL,
    ts REAL NOT NULL
);
"""


# Columns added after the first release, before tasks had named migrations: (table, column, SQL
# type). Migration 0002 adds them; a file or schema made by that older code already has some.
ADDED_COLUMNS = (
    ("tasks_tasks", "budget_usd", "REAL"),      # the task's own spending limit (None: none)
    ("tasks_tasks", "failure", "TEXT"),         # why it failed, as a code: budget_exhausted, no_local_planner, ...
    ("tasks_tasks", "local_only", "TEXT"),      # why every model call stays local (None: it need not)
    ("tasks_gates", "edited_by", "TEXT"),       # the key whose edit of the arguments waits for review
    ("tasks_gates", "revision", "INTEGER NOT NULL DEFAULT 0"),  # edits so far: a decision names the one it saw
)

# Named migrations (``turnout.sqlitedb`` / ``turnout.pgdb``), recorded in ``tasks_migrations``;
# never edit or reorder, only append.
MIGRATIONS: list[sqlitedb.Migration] = [
    ("0001_tables", [s.strip() for s in SCHEMA.split(";") if s.strip()]),
    ("0002_budget_failure_local_only_edits", [f"ALTER TABLE {t} ADD COLUMN {c} {k}" for t, c, k in ADDED_COLUMNS]),
]


def pg_migrations(s: str) -> list[pgdb.Migration]:
    """:data:`MIGRATIONS` in PostgreSQL's types, same names. Every statement is idempotent (``IF NOT
    EXISTS``), so a schema made before named migrations is adopted as it is."""
    return [
        ("0001_tables", [
            f"""CREATE TABLE IF NOT EXISTS {s}.tasks_tasks (
                id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_id TEXT, goal TEXT NOT NULL, inputs TEXT NOT NULL,
                tools TEXT NOT NULL, sensitivity TEXT, state TEXT NOT NULL, plan TEXT,
                plan_version INTEGER NOT NULL DEFAULT 0, replans INTEGER NOT NULL DEFAULT 0,
                notes TEXT NOT NULL DEFAULT '[]', result TEXT, error TEXT, cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
                saved_usd DOUBLE PRECISION NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL,
                updated DOUBLE PRECISION NOT NULL, lease_owner TEXT, lease_until DOUBLE PRECISION,
                cancel_requested INTEGER NOT NULL DEFAULT 0)""",
            f"CREATE INDEX IF NOT EXISTS tasks_tasks_state ON {s}.tasks_tasks (state, lease_until)",
            f"CREATE INDEX IF NOT EXISTS tasks_tasks_tenant ON {s}.tasks_tasks (tenant, created)",
            f"""CREATE TABLE IF NOT EXISTS {s}.tasks_steps (
                task_id TEXT NOT NULL, plan_version INTEGER NOT NULL, step_id TEXT NOT NULL, kind TEXT NOT NULL,
                route TEXT, engine TEXT, locality TEXT, request_id TEXT, prompt_tokens INTEGER NOT NULL DEFAULT 0,
                completion_tokens INTEGER NOT NULL DEFAULT 0, cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
                latency_ms DOUBLE PRECISION, cached INTEGER NOT NULL DEFAULT 0,
                saved_usd DOUBLE PRECISION NOT NULL DEFAULT 0, status TEXT NOT NULL, result TEXT, error TEXT,
                ts DOUBLE PRECISION NOT NULL, PRIMARY KEY (task_id, plan_version, step_id))""",
            f"""CREATE TABLE IF NOT EXISTS {s}.tasks_gates (
                id TEXT PRIMARY KEY, task_id TEXT NOT NULL, tenant TEXT NOT NULL, plan_version INTEGER NOT NULL,
                step_id TEXT NOT NULL, tool TEXT NOT NULL, arguments TEXT NOT NULL, reason TEXT, why TEXT,
                state TEXT NOT NULL, deadline DOUBLE PRECISION NOT NULL, created DOUBLE PRECISION NOT NULL,
                decided_by TEXT, decided_at DOUBLE PRECISION, decision_reason TEXT, edited TEXT,
                UNIQUE (task_id, plan_version, step_id))""",
            f"CREATE INDEX IF NOT EXISTS tasks_gates_state ON {s}.tasks_gates (state, tenant)",
            f"""CREATE TABLE IF NOT EXISTS {s}.tasks_events (
                seq BIGSERIAL PRIMARY KEY, task_id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL,
                data TEXT)""",
            f"CREATE INDEX IF NOT EXISTS tasks_events_task ON {s}.tasks_events (task_id, seq)",
            f"""CREATE TABLE IF NOT EXISTS {s}.tasks_tool_calls (
                idempotency_key TEXT PRIMARY KEY, task_id TEXT NOT NULL, tool TEXT NOT NULL, arguments TEXT NOT NULL,
                state TEXT NOT NULL, result TEXT, attempts INTEGER NOT NULL DEFAULT 0, ts DOUBLE PRECISION NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {s}.tasks_step_cache (
                key TEXT PRIMARY KEY, tenant TEXT NOT NULL, result TEXT NOT NULL, engine TEXT,
                cost_usd DOUBLE PRECISION NOT NULL, ts DOUBLE PRECISION NOT NULL)""",
        ]),
        ("0002_budget_failure_local_only_edits", [
            f"ALTER TABLE {s}.tasks_tasks ADD COLUMN IF NOT EXISTS budget_usd DOUBLE PRECISION",
            f"ALTER TABLE {s}.tasks_tasks ADD COLUMN IF NOT EXISTS failure TEXT",
            f"ALTER TABLE {s}.tasks_tasks ADD COLUMN IF NOT EXISTS local_only TEXT",
            f"ALTER TABLE {s}.tasks_gates ADD COLUMN IF NOT EXISTS edited_by TEXT",
            f"ALTER TABLE {s}.tasks_gates ADD COLUMN IF NOT EXISTS revision INTEGER NOT NULL DEFAULT 0",
        ]),
    ]


def _adopt_old_file(conn: sqlite3.Connection) -> None:
    """A file whose tasks tables predate named migrations (tables, no ``tasks_migrations``): add
    the columns it lacks as the older code did, then record both migrations as applied."""
    with sqlitedb.immediate(conn):
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "tasks_tasks" not in tables or "tasks_migrations" in tables:
            return
        for statement in MIGRATIONS[0][1]:  # CREATE ... IF NOT EXISTS: whatever the older code had not made
            conn.execute(statement)
        for table, column, kind in ADDED_COLUMNS:
            if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        sqlitedb.record_applied(conn, "tasks_migrations", [name for name, _ in MIGRATIONS[:2]])


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _j(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _u(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


class TaskTables:
    """The SQL, once, over a backend that runs it (numbered placeholders, ``turnout.sqlshared``):
    :class:`SQLiteTaskStore` or :class:`PostgresTaskStore`."""

    skip_locked = ""  # PostgreSQL: a claim skips rows another replica is claiming

    def tx(self) -> AbstractContextManager[Any]:
        """An object whose ``execute(sql, args)`` returns a cursor with rows by column name, in one
        write transaction."""
        raise NotImplementedError

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ---- tasks --------------------------------------------------------------------------
    def create(self, tenant: str, key_id: str | None, goal: str, inputs: dict[str, Any], tools: list[str],
               sensitivity: str | None, budget_usd: float | None = None, local_only: str | None = None) -> str:
        tid, now = new_id("task"), time.time()
        with self.tx() as c:
            c.execute("INSERT INTO tasks_tasks (id, tenant, key_id, goal, inputs, tools, sensitivity, state, created, "
                      f"updated, budget_usd, local_only) VALUES ({marks(12)})",
                      (tid, tenant, key_id, goal, _j(inputs), _j(tools), sensitivity, "queued", now, now, budget_usd,
                       local_only))
            self._event(c, tid, "created", {"goal": goal, "budget_usd": budget_usd, "local_only": local_only})
        return tid

    def get(self, tid: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM tasks_tasks WHERE id = $1", (tid,))
        if not rows:
            return None
        t = dict(rows[0])
        for k in ("inputs", "tools", "plan", "notes", "result"):
            t[k] = _u(t[k])
        return t

    def tasks(self, tenant: str | None, limit: int = 50) -> list[dict[str, Any]]:
        a = Args()
        where = f"WHERE tenant = {a(tenant)}" if tenant is not None else ""
        rows = self._all(f"SELECT id, tenant, goal, state, cost_usd, saved_usd, created, updated FROM tasks_tasks "
                         f"{where} ORDER BY created DESC LIMIT {a(limit)}", a)
        return [dict(r) for r in rows]

    def update(self, tid: str, event: tuple[str, dict[str, Any]] | None = None, **fields: Any) -> None:
        fields["updated"] = time.time()
        for k in ("plan", "notes", "result"):
            if k in fields:
                fields[k] = _j(fields[k])
        a = Args()
        sets = ", ".join(f"{k} = {a(v)}" for k, v in fields.items())
        with self.tx() as c:
            c.execute(f"UPDATE tasks_tasks SET {sets} WHERE id = {a(tid)}", a)
            if event is not None:
                self._event(c, tid, *event)

    def request_cancel(self, tid: str) -> bool:
        """Mark a task cancelled (parked or queued: at once; running: its runner stops at the next step)."""
        with self.tx() as c:
            row = c.execute("SELECT state FROM tasks_tasks WHERE id = $1", (tid,)).fetchone()
            if row is None or row["state"] in TERMINAL:
                return False
            c.execute("UPDATE tasks_tasks SET cancel_requested = 1, updated = $1 WHERE id = $2", (time.time(), tid))
            if row["state"] != "running":
                c.execute("UPDATE tasks_tasks SET state = 'cancelled', lease_owner = NULL WHERE id = $1", (tid,))
                c.execute("UPDATE tasks_gates SET state = 'cancelled' WHERE task_id = $1 AND state = 'pending'", (tid,))
                self._event(c, tid, "cancelled", {})
        return True

    # ---- the lease ----------------------------------------------------------------------
    def claim(self, owner: str, lease_s: float) -> str | None:
        """Take one runnable task whose lease is free or lapsed; None when there is none."""
        now = time.time()
        if not self._all("SELECT 1 FROM tasks_tasks WHERE state IN ('queued', 'running') AND "
                         "(lease_until IS NULL OR lease_until < $1) LIMIT 1", (now,)):
            return None  # the common idle case: a read, no write lock on a file the ledger shares
        with self.tx() as c:
            row = c.execute(
                "SELECT id FROM tasks_tasks WHERE state IN ('queued', 'running') AND "
                "(lease_until IS NULL OR lease_until < $1) ORDER BY updated LIMIT 1" + self.skip_locked,
                (now,)).fetchone()
            if row is None:
                return None
            won = c.execute("UPDATE tasks_tasks SET lease_owner = $1, lease_until = $2, state = 'running' "
                            "WHERE id = $3 AND state IN ('queued', 'running') AND "
                            "(lease_until IS NULL OR lease_until < $4)",
                            (owner, now + lease_s, row["id"], now)).rowcount
            if won != 1:  # another replica took it between the two statements
                return None
            self._event(c, row["id"], "leased", {"replica": owner})
            return str(row["id"])

    def renew(self, tid: str, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when this replica no longer holds it (then it must stop)."""
        with self.tx() as c:
            cur = c.execute("UPDATE tasks_tasks SET lease_until = $1 WHERE id = $2 AND lease_owner = $3",
                            (time.time() + lease_s, tid, owner))
            return bool(cur.rowcount == 1)

    def release(self, tid: str, owner: str) -> None:
        with self.tx() as c:
            c.execute("UPDATE tasks_tasks SET lease_owner = NULL, lease_until = NULL "
                      "WHERE id = $1 AND lease_owner = $2", (tid, owner))

    # ---- steps --------------------------------------------------------------------------
    def steps(self, tid: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM tasks_steps WHERE task_id = $1 ORDER BY plan_version, ts", (tid,))
        out = []
        for r in rows:
            d = dict(r)
            d["result"] = _u(d["result"])
            d["cached"] = bool(d["cached"])
            out.append(d)
        return out

    def step(self, tid: str, version: int, sid: str) -> dict[str, Any] | None:
        return next((s for s in self.steps(tid) if s["plan_version"] == version and s["step_id"] == sid), None)

    def save_step(self, tid: str, version: int, sid: str, **f: Any) -> None:
        f.setdefault("ts", time.time())
        if "result" in f:
            f["result"] = _j(f["result"])
        cols = ["task_id", "plan_version", "step_id", *f]
        with self.tx() as c:
            updates = ", ".join(f"{k} = excluded.{k}" for k in f)
            c.execute(f"INSERT INTO tasks_steps ({', '.join(cols)}) VALUES ({marks(len(cols))}) "
                      f"ON CONFLICT (task_id, plan_version, step_id) DO UPDATE SET {updates}",
                      (tid, version, sid, *f.values()))
            c.execute("UPDATE tasks_tasks SET cost_usd = (SELECT COALESCE(SUM(cost_usd), 0) FROM tasks_steps WHERE "
                      "task_id = $1), saved_usd = (SELECT COALESCE(SUM(saved_usd), 0) FROM tasks_steps WHERE "
                      "task_id = $1), updated = $2 WHERE id = $1", (tid, time.time()))
            self._event(c, tid, "step", {"plan_version": version, "step": sid, "status": f.get("status"),
                                         "cached": bool(f.get("cached"))})

    # ---- gates --------------------------------------------------------------------------
    def gate_for(self, tid: str, version: int, sid: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM tasks_gates WHERE task_id = $1 AND plan_version = $2 AND step_id = $3",
                         (tid, version, sid))
        return _gate(rows[0]) if rows else None

    def gate(self, gid: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM tasks_gates WHERE id = $1", (gid,))
        return _gate(rows[0]) if rows else None

    def park(self, tid: str, tenant: str, version: int, sid: str, tool: str, args: dict[str, Any], reason: str,
             why: str, deadline: float) -> str:
        """Open a gate and park the task (awaiting_approval), in one transaction."""
        gid = new_id("gate")
        with self.tx() as c:
            c.execute("INSERT INTO tasks_gates (id, task_id, tenant, plan_version, step_id, tool, arguments, reason, "
                      "why, state, deadline, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11)",
                      (gid, tid, tenant, version, sid, tool, _j(args), reason, why, deadline, time.time()))
            c.execute("UPDATE tasks_tasks SET state = 'awaiting_approval', lease_owner = NULL, lease_until = NULL, "
                      "updated = $1 WHERE id = $2", (time.time(), tid))
            self._event(c, tid, "awaiting_approval", {"gate": gid, "tool": tool, "arguments": args, "reason": reason})
        return gid

    def gates(self, tenant: str | None, state: str | None = "pending") -> list[dict[str, Any]]:
        a, where = Args(), []
        if tenant is not None:
            where.append(f"tenant = {a(tenant)}")
        if state is not None:
            where.append(f"state = {a(state)}")
        sql = "SELECT * FROM tasks_gates" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created"
        return [_gate(r) for r in self._all(sql, a)]

    def decide(self, gid: str, state: str, by: str, reason: str | None, *, revision: int | None = None,
               at: float | None = None) -> bool:
        """Record a decision on a pending gate and queue its task; False if it was already decided,
        or (when given) its arguments are no longer at ``revision`` or its deadline passed before
        ``at``. An approved gate runs its ``edited`` arguments when it has them."""
        now = time.time()
        a = Args()
        sql = (f"UPDATE tasks_gates SET state = {a(state)}, decided_by = {a(by)}, decided_at = {a(now)}, "
               f"decision_reason = {a(reason)} WHERE id = {a(gid)} AND state = 'pending'")
        if revision is not None:
            sql += f" AND revision = {a(revision)}"
        if at is not None:
            sql += f" AND deadline >= {a(at)}"
        with self.tx() as c:
            if c.execute(sql, a).rowcount != 1:
                return False
            row = c.execute("SELECT task_id, edited FROM tasks_gates WHERE id = $1", (gid,)).fetchone()
            tid = row["task_id"]
            c.execute("UPDATE tasks_tasks SET state = 'queued', updated = $1 WHERE id = $2 AND state = "
                      "'awaiting_approval'", (now, tid))
            self._event(c, tid, "decision", {"gate": gid, "decision": state, "by": by, "reason": reason,
                                             "edited": row["edited"] is not None})
        return True

    def edit(self, gid: str, by: str, edited: dict[str, Any], revision: int, at: float) -> bool:
        """Replace the arguments of a pending gate with an approver's edit, which parks again for
        another approver (four eyes on the call that runs); False if the gate was decided, edited
        since ``revision`` or is past its deadline."""
        with self.tx() as c:
            cur = c.execute("UPDATE tasks_gates SET edited = $1, edited_by = $2, revision = revision + 1 WHERE id = $3 "
                            "AND state = 'pending' AND revision = $4 AND deadline >= $5",
                            (_j(edited), by, gid, revision, at))
            if cur.rowcount != 1:
                return False
            tid = c.execute("SELECT task_id FROM tasks_gates WHERE id = $1", (gid,)).fetchone()["task_id"]
            self._event(c, tid, "edited", {"gate": gid, "by": by, "revision": revision + 1})
        return True

    def expired_gates(self) -> list[dict[str, Any]]:
        return [_gate(r) for r in self._all("SELECT * FROM tasks_gates WHERE state = 'pending' AND deadline < $1",
                                            (time.time(),))]

    # ---- irreversible tool calls ---------------------------------------------------------
    def tool_call(self, key: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM tasks_tool_calls WHERE idempotency_key = $1", (key,))
        if not rows:
            return None
        d = dict(rows[0])
        d["result"] = _u(d["result"])
        return d

    def tool_started(self, key: str, tid: str, tool: str, args: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO tasks_tool_calls (idempotency_key, task_id, tool, arguments, state, attempts, ts) "
                      "VALUES ($1, $2, $3, $4, 'started', 1, $5) ON CONFLICT (idempotency_key) DO UPDATE SET "
                      "attempts = tasks_tool_calls.attempts + 1", (key, tid, tool, _j(args), time.time()))

    def tool_done(self, key: str, result: Any) -> None:
        with self.tx() as c:
            c.execute("UPDATE tasks_tool_calls SET state = 'done', result = $1 WHERE idempotency_key = $2",
                      (_j(result), key))

    # ---- step cache ------------------------------------------------------------------------
    def cached(self, key: str, tenant: str, ttl_s: float) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM tasks_step_cache WHERE key = $1 AND tenant = $2 AND ts > $3",
                         (key, tenant, time.time() - ttl_s))
        if not rows:
            return None
        d = dict(rows[0])
        d["result"] = _u(d["result"])
        return d

    def keep(self, key: str, tenant: str, result: Any, engine: str | None, cost: float) -> None:
        with self.tx() as c:
            c.execute(f"INSERT INTO tasks_step_cache (key, tenant, result, engine, cost_usd, ts) VALUES ({marks(6)}) "
                      "ON CONFLICT (key) DO UPDATE SET tenant = excluded.tenant, result = excluded.result, "
                      "engine = excluded.engine, cost_usd = excluded.cost_usd, ts = excluded.ts",
                      (key, tenant, _j(result), engine, cost, time.time()))

    # ---- events -------------------------------------------------------------------------
    def event(self, tid: str, kind: str, data: dict[str, Any]) -> None:
        with self.tx() as c:
            self._event(c, tid, kind, data)

    def _event(self, c: Any, tid: str, kind: str, data: dict[str, Any]) -> None:
        c.execute("INSERT INTO tasks_events (task_id, ts, kind, data) VALUES ($1, $2, $3, $4)",
                  (tid, time.time(), kind, _j(data)))

    def events(self, tid: str, after: int = 0) -> list[dict[str, Any]]:
        rows = self._all("SELECT seq, ts, kind, data FROM tasks_events WHERE task_id = $1 AND seq > $2 ORDER BY seq",
                         (tid, after))
        return [{"seq": r["seq"], "ts": r["ts"], "kind": r["kind"], "data": _u(r["data"])} for r in rows]


def _gate(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["arguments"] = _u(d["arguments"])
    d["edited"] = _u(d["edited"])
    return d


class SQLiteTaskStore(TaskTables):
    """The SQLite store (``storage.sqlite_path``): replicas on one host share the file."""

    def __init__(self, path: str | Path) -> None:
        # synchronous=FULL (sqlite's default, as before): a started irreversible call's record
        # must survive a power cut, or a retry after it would make the call twice
        self.db = sqlitedb.connect(path, synchronous="FULL")
        self.db.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        # reads on a connection of their own: in WAL mode they never wait for a writer, so a task
        # view answers while a write waits for the file's lock (held by another replica, the ledger)
        self.rdb = sqlitedb.connect(path, synchronous="FULL")
        self.rdb.row_factory = sqlite3.Row
        self.rlock = threading.Lock()
        with self.lock:
            _adopt_old_file(self.db)
            sqlitedb.migrate(self.db, "tasks_migrations", MIGRATIONS)

    @contextmanager
    def tx(self) -> Iterator[sqlitedb.Numbered]:
        with self.lock, sqlitedb.immediate(self.db) as conn:
            yield sqlitedb.Numbered(conn)

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.rlock:
            return [dict(r) for r in sqlitedb.Numbered(self.rdb).execute(sql, args).fetchall()]

    def close(self) -> None:
        with self.lock, self.rlock:
            self.db.close()
            self.rdb.close()


class PostgresTaskStore(TaskTables):
    """The same tables in PostgreSQL (``storage.postgres_dsn``, schema ``postgres_schema``):
    replicas on several hosts share it; a claim skips rows another replica is claiming."""

    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        from psycopg.rows import dict_row

        self.schema, self._dict_row = schema, dict_row
        self.pg = pgdb.Connection(dsn, search_path=schema)  # one connection, locked, reopened when dropped
        self.pg.run(lambda cur: pgdb.migrate(cur, schema, "tasks_migrations", pg_migrations(schema)))

    @contextmanager
    def tx(self) -> Iterator[Any]:
        with self.pg.transaction() as cur:
            cur.row_factory = self._dict_row
            yield cur

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        def fetch(cur: Any) -> list[dict[str, Any]]:
            cur.row_factory = self._dict_row
            return [dict(r) for r in cur.execute(sql, tuple(args)).fetchall()]

        return self.pg.run(fetch)

    def close(self) -> None:
        self.pg.close()


def open_task_store(sqlite_path: str, dsn: str | None, schema: str = "public") -> TaskTables:
    return PostgresTaskStore(dsn, schema=schema) if dsn else SQLiteTaskStore(sqlite_path)
