"""Where API keys live (the keys themselves are ``turnout.governance.keys``): tables ``keys_*``
in the gateway's SQLite file (:class:`SQLiteKeyStore`, embedded) or in PostgreSQL when
``storage.postgres_dsn`` is set (:class:`PostgresKeyStore`), one store for every replica.
:func:`open_key_store` picks. Both run the SQL of :class:`KeyTables` (numbered placeholders,
``turnout.sqlshared``). A key
id has one or more *secrets* (table ``keys_secrets``): rotation adds a new secret and gives the
old ones an expiry a short overlap away.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from turnout import pgdb
from turnout import sqlitedb as sqlite
from turnout.errors import AuthenticationFailed, NotFound, PermissionDenied
from turnout.governance import clock
from turnout.governance.keys import (
    DEFAULT_OVERLAP_S,
    DEFAULT_ROLES,
    ApiKey,
    Limits,
    NewKey,
    check_key,
    hash_key,
    hint_of,
    key_shaped,
    new_key,
    new_plaintext,
)
from turnout.sqlshared import Args, marks

if TYPE_CHECKING:
    from turnout.config import StorageConfig


MIGRATIONS: list[sqlite.Migration] = [
    ("0001_api_keys", [
        """CREATE TABLE keys_api_keys (
               key_id TEXT PRIMARY KEY,
               key_hash TEXT NOT NULL UNIQUE,
               hint TEXT NOT NULL,
               tenant TEXT NOT NULL,
               routes TEXT NOT NULL DEFAULT '[]',
               rpm INTEGER,
               tpm INTEGER,
               usd_per_day REAL,
               usd_per_month REAL,
               created_at TEXT NOT NULL,
               revoked_at TEXT)""",
        "CREATE INDEX keys_api_keys_tenant ON keys_api_keys (tenant)",
    ]),
    # roles, expiry and rotation: the hash that authenticates moves to keys_secrets (one key
    # id, several secrets while a rotation overlaps); keys_api_keys.key_hash is the newest.
    ("0002_roles_expiry_secrets", [
        """ALTER TABLE keys_api_keys ADD COLUMN roles TEXT NOT NULL DEFAULT '["user"]'""",
        "ALTER TABLE keys_api_keys ADD COLUMN expires_at TEXT",
        """CREATE TABLE keys_secrets (
               key_hash TEXT PRIMARY KEY,
               key_id TEXT NOT NULL REFERENCES keys_api_keys (key_id),
               hint TEXT NOT NULL,
               created_at TEXT NOT NULL,
               expires_at TEXT)""",
        "CREATE INDEX keys_secrets_key ON keys_secrets (key_id)",
        "INSERT INTO keys_secrets (key_hash, key_id, hint, created_at) "
        "SELECT key_hash, key_id, hint, created_at FROM keys_api_keys",
    ]),
    # the person behind a key (four eyes), and the operator's admin keys: every admin key made
    # so far could manage every tenant, so each keeps that power; admin keys made through the
    # API from now on administer their own tenant only.
    ("0003_owner_all_tenants", [
        "ALTER TABLE keys_api_keys ADD COLUMN owner TEXT",
        "ALTER TABLE keys_api_keys ADD COLUMN all_tenants INTEGER NOT NULL DEFAULT 0",
        """UPDATE keys_api_keys SET all_tenants = 1 WHERE roles LIKE '%"admin"%'""",
    ]),
]


def pg_migrations(s: str) -> list[pgdb.Migration]:
    """The same tables in PostgreSQL (a new store: one migration holds the current shape)."""
    return [
        ("0001_api_keys", [
            f"""CREATE TABLE {s}.keys_api_keys (
                   key_id TEXT PRIMARY KEY,
                   key_hash TEXT NOT NULL UNIQUE,
                   hint TEXT NOT NULL,
                   tenant TEXT NOT NULL,
                   routes TEXT NOT NULL DEFAULT '[]',
                   rpm BIGINT,
                   tpm BIGINT,
                   usd_per_day DOUBLE PRECISION,
                   usd_per_month DOUBLE PRECISION,
                   created_at TEXT NOT NULL,
                   revoked_at TEXT,
                   roles TEXT NOT NULL DEFAULT '["user"]',
                   expires_at TEXT)""",
            f"CREATE INDEX keys_api_keys_tenant ON {s}.keys_api_keys (tenant)",
            f"""CREATE TABLE {s}.keys_secrets (
                   key_hash TEXT PRIMARY KEY,
                   key_id TEXT NOT NULL REFERENCES {s}.keys_api_keys (key_id),
                   hint TEXT NOT NULL,
                   created_at TEXT NOT NULL,
                   expires_at TEXT)""",
            f"CREATE INDEX keys_secrets_key ON {s}.keys_secrets (key_id)",
        ]),
        ("0003_owner_all_tenants", [  # as SQLite's 0003
            f"ALTER TABLE {s}.keys_api_keys ADD COLUMN owner TEXT",
            f"ALTER TABLE {s}.keys_api_keys ADD COLUMN all_tenants INTEGER NOT NULL DEFAULT 0",
            f"""UPDATE {s}.keys_api_keys SET all_tenants = 1 WHERE roles LIKE '%"admin"%'""",
        ]),
    ]


KEY_COLUMNS = "k.key_id, k.tenant, k.hint, k.routes, k.rpm, k.tpm, k.usd_per_day, k.usd_per_month, k.created_at, " \
           "k.revoked_at, k.roles, k.expires_at, k.owner, k.all_tenants"
KEY_NCOL = 14


def row_to_key(row: Sequence[Any], secret_expiry: str | None = None) -> ApiKey:
    key_id, tenant, hint, routes, rpm, tpm, usd_day, usd_month, created, revoked, roles, expires, owner, every = row
    return ApiKey(key_id, tenant, hint, tuple(json.loads(routes)),
                  Limits(rpm, tpm, None if usd_day is None else float(usd_day),
                         None if usd_month is None else float(usd_month)),
                  created, revoked, tuple(json.loads(roles)), clock.sooner(expires, secret_expiry), owner, bool(every))


class KeyTables:
    """The SQL, once, over a backend that runs it (numbered placeholders, ``turnout.sqlshared``)."""

    def tx(self) -> AbstractContextManager[Any]:
        """An object whose ``execute(sql, args)`` returns a cursor (``fetchone``, ``rowcount``),
        inside one write transaction."""
        raise NotImplementedError

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def migrate(self, table: str, migrations: Sequence[sqlite.Migration],
                pg_migrations: Callable[[str], Sequence[pgdb.Migration]]) -> list[str]:
        """Apply a neighbouring component's named migrations (``pg_migrations(schema)`` on
        PostgreSQL) to this store's database; returns the names applied."""
        raise NotImplementedError

    def create(self, tenant: str, *, routes: Iterable[str] = (), limits: Limits | None = None,
               roles: Iterable[str] = DEFAULT_ROLES, expires_at: datetime | None = None, owner: str | None = None,
               all_tenants: bool = False) -> NewKey:
        """Store a new key (:func:`turnout.governance.keys.new_key` checks it). ``all_tenants`` (an
        operator's admin key) needs the admin role; callers that act for one tenant (the admin
        API) never pass it."""
        new = new_key(tenant, routes=routes, limits=limits, roles=roles, expires_at=expires_at, owner=owner,
                      all_tenants=all_tenants)
        key, lim, digest = new.key, new.key.limits, hash_key(new.plaintext)
        with self.tx() as c:
            c.execute("INSERT INTO keys_api_keys (key_id, tenant, hint, routes, rpm, tpm, usd_per_day, "
                      "usd_per_month, created_at, revoked_at, roles, expires_at, key_hash, owner, "
                      f"all_tenants) VALUES ({marks(15)})",
                      (key.key_id, tenant, key.hint, json.dumps(list(key.routes)), lim.rpm, lim.tpm,
                       lim.usd_per_day, lim.usd_per_month, key.created_at, None, json.dumps(list(key.roles)),
                       key.expires_at, digest, owner, int(all_tenants)))
            c.execute("INSERT INTO keys_secrets (key_hash, key_id, hint, created_at) VALUES ($1, $2, $3, $4)",
                      (digest, key.key_id, key.hint, key.created_at))
        return new

    def rotate(self, key_id: str, *, overlap_s: float = DEFAULT_OVERLAP_S) -> NewKey:
        """A new secret for the same key id (same tenant, roles, limits, budgets); the old
        secrets keep working for ``overlap_s`` seconds more, then expire. Raises NotFound."""
        if not overlap_s >= 0:
            raise ValueError(f"overlap must be >= 0 seconds, got {overlap_s}")
        plaintext, now = new_plaintext(), clock.now()
        hint, until = hint_of(plaintext), clock.iso(now + timedelta(seconds=overlap_s))
        with self.tx() as c:
            row = c.execute(f"SELECT {KEY_COLUMNS} FROM keys_api_keys k WHERE k.key_id = $1", (key_id,)).fetchone()
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", param="key_id", code="key_not_found")
            if row[9] is not None:
                raise PermissionDenied(f"API key {key_id} was revoked; create a new one", code="key_revoked")
            for (h, exp) in c.execute("SELECT key_hash, expires_at FROM keys_secrets WHERE key_id = $1",
                                      (key_id,)).fetchall():
                c.execute("UPDATE keys_secrets SET expires_at = $1 WHERE key_hash = $2", (clock.sooner(exp, until), h))
            c.execute("INSERT INTO keys_secrets (key_hash, key_id, hint, created_at) VALUES ($1, $2, $3, $4)",
                      (hash_key(plaintext), key_id, hint, clock.iso(now)))
            c.execute("UPDATE keys_api_keys SET key_hash = $1, hint = $2 WHERE key_id = $3",
                      (hash_key(plaintext), hint, key_id))
        return NewKey(replace(row_to_key(row), hint=hint), plaintext)

    def list(self, *, tenant: str | None = None, include_revoked: bool = True) -> list[ApiKey]:
        sql, a = f"SELECT {KEY_COLUMNS} FROM keys_api_keys k WHERE 1 = 1", Args()
        if tenant is not None:
            sql += f" AND k.tenant = {a(tenant)}"
        if not include_revoked:
            sql += " AND k.revoked_at IS NULL"
        return [row_to_key(r) for r in self.read(sql + " ORDER BY k.created_at, k.key_id", a)]

    def get(self, key_id: str) -> ApiKey | None:
        rows = self.read(f"SELECT {KEY_COLUMNS} FROM keys_api_keys k WHERE k.key_id = $1", (key_id,))
        return row_to_key(rows[0]) if rows else None

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke now, every secret of the key (idempotent: revoking twice keeps the first time).
        Raises NotFound."""
        with self.tx() as c:
            c.execute("UPDATE keys_api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE key_id = $2",
                      (clock.iso(clock.now()), key_id))
            row = c.execute(f"SELECT {KEY_COLUMNS} FROM keys_api_keys k WHERE k.key_id = $1", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}", param="key_id", code="key_not_found")
        return row_to_key(row)

    def lookup_by_plaintext(self, plaintext: str) -> ApiKey | None:
        """The key (revoked or expired or not) whose secret matches, or None. The key's
        ``expires_at`` is the sooner of its own and this secret's."""
        if not key_shaped(plaintext):
            return None
        rows = self.read(f"SELECT {KEY_COLUMNS}, s.expires_at FROM keys_secrets s JOIN keys_api_keys k "
                          "ON k.key_id = s.key_id WHERE s.key_hash = $1", (hash_key(plaintext),))
        return row_to_key(rows[0][:KEY_NCOL], rows[0][KEY_NCOL]) if rows else None

    _RAW_KEYS = ("key_id", "key_hash", "hint", "tenant", "routes", "rpm", "tpm", "usd_per_day", "usd_per_month",
                 "created_at", "revoked_at", "roles", "expires_at", "owner", "all_tenants")
    _RAW_SECRETS = ("key_hash", "key_id", "hint", "created_at", "expires_at")

    def copy_from(self, other: KeyTables) -> int:
        """Copy every key (hashes, never plaintext) and secret of ``other`` that this store lacks,
        e.g. the SQLite file's keys into PostgreSQL when a deployment scales out. Returns the
        number of keys copied."""
        keys = other.read(f"SELECT {', '.join(self._RAW_KEYS)} FROM keys_api_keys ORDER BY created_at")
        secrets_ = other.read(f"SELECT {', '.join(self._RAW_SECRETS)} FROM keys_secrets")
        have = {r[0] for r in self.read("SELECT key_id FROM keys_api_keys")}
        new = [k for k in keys if k[0] not in have]
        with self.tx() as c:
            for row in new:
                c.execute(f"INSERT INTO keys_api_keys ({', '.join(self._RAW_KEYS)}) "
                          f"VALUES ({marks(len(self._RAW_KEYS))})", row)
            for row in secrets_:
                if row[1] in {k[0] for k in new}:
                    c.execute(f"INSERT INTO keys_secrets ({', '.join(self._RAW_SECRETS)}) "
                              f"VALUES ({marks(len(self._RAW_SECRETS))})", row)
        return len(new)

    def authenticate(self, plaintext: str | None, route: str | None = None) -> ApiKey:
        """The active, unexpired key for a bearer token, allowed on ``route`` if given.
        Raises AuthenticationFailed (missing, unknown, revoked, expired) or PermissionDenied (route)."""
        if not plaintext:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer tk-...'")
        return check_key(self.lookup_by_plaintext(plaintext), route)

    async def aauthenticate(self, plaintext: str | None, route: str | None = None) -> ApiKey:
        return await asyncio.to_thread(self.authenticate, plaintext, route)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SQLiteKeyStore(KeyTables):
    """Keys in the gateway's SQLite file (tables ``keys_*``): the embedded store."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else sqlite.default_db_path()
        self._conn = sqlite.connect(self.path)
        self._lock = threading.Lock()
        sqlite.migrate(self._conn, "keys_migrations", MIGRATIONS)

    def migrate(self, table: str, migrations: Sequence[sqlite.Migration],
                pg_migrations: Callable[[str], Sequence[pgdb.Migration]]) -> list[str]:
        with self._lock:
            return sqlite.migrate(self._conn, table, migrations)

    @contextmanager
    def tx(self) -> Iterator[sqlite.Numbered]:
        with self._lock, sqlite.immediate(self._conn) as c:
            yield sqlite.Numbered(c)

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(r) for r in sqlite.Numbered(self._conn).execute(sql, args).fetchall()]

    def close(self) -> None:
        self._conn.close()


class PostgresKeyStore(KeyTables):
    """Keys in PostgreSQL (``storage.postgres_dsn``), shared by every replica. One connection,
    serialised by a lock; reconnects once when the server dropped it."""

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", schema):
            raise ValueError(f"schema must be a plain lower-case identifier, got {schema!r}")
        self.dsn, self.schema = dsn, schema
        self.pg = pgdb.Connection(dsn, search_path=schema)
        self.pg.run(lambda cur: pgdb.migrate(cur, schema, "keys_migrations", pg_migrations(schema)))

    def migrate(self, table: str, migrations: Sequence[sqlite.Migration],
                pg_migrations: Callable[[str], Sequence[pgdb.Migration]]) -> list[str]:
        return self.pg.run(lambda cur: pgdb.migrate(cur, self.schema, table, pg_migrations(self.schema)))

    def tx(self) -> AbstractContextManager[Any]:
        return self.pg.transaction()

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def fetch(cur: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in cur.execute(sql, tuple(args)).fetchall()]

        return self.pg.run(fetch)

    def close(self) -> None:
        self.pg.close()


def open_key_store(storage: StorageConfig) -> KeyTables:
    """PostgreSQL when ``storage.postgres_dsn`` is set (every replica shares it), else the SQLite file."""
    if storage.postgres_dsn:
        return PostgresKeyStore(storage.postgres_dsn, schema=storage.postgres_schema)
    return SQLiteKeyStore(storage.sqlite_path)
