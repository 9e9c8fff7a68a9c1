"""API keys and tenants.

A key is ``tk-`` followed by 43 URL-safe characters (256 random bits). It is shown once,
at creation; the store keeps only its SHA-256 (a high-entropy secret needs no slow hash or
salt) and a short hint (``tk-...abcd``) for people to recognise it. Lookup is one
equality match on the hash's unique index, so timing says nothing about how much of a
guessed key was right.

Each key belongs to a tenant and carries its policy: the route aliases it may use (empty
= all), rate limits (requests and tokens per minute) and budgets (USD per UTC day and per
UTC calendar month). ``None`` means unlimited. Limits are enforced by
``turnout.governance.limits``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from turnout import sqlitedb as sqlite
from turnout.errors import AuthenticationFailed, NotFound, PermissionDenied

KEY_PREFIX = "tk-"
_KEY_SHAPE = re.compile(r"^tk-[A-Za-z0-9_-]{43}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")

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
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key limits; ``None`` is unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "usd_per_day", "usd_per_month"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"{name} must be >= 0 (or unset for unlimited), got {v}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    hint: str
    routes: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    created_at: str = ""
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, route: str) -> bool:
        return not self.routes or route in self.routes


@dataclass(frozen=True, slots=True)
class NewKey:
    """The only object that ever holds the plaintext key: print it once, then drop it."""

    key: ApiKey
    plaintext: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def new_plaintext() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


_COLUMNS = "key_id, tenant, hint, routes, rpm, tpm, usd_per_day, usd_per_month, created_at, revoked_at"


def _row_to_key(row: tuple) -> ApiKey:  # type: ignore[type-arg]
    key_id, tenant, hint, routes, rpm, tpm, usd_day, usd_month, created, revoked = row
    return ApiKey(key_id, tenant, hint, tuple(json.loads(routes)), Limits(rpm, tpm, usd_day, usd_month),
                  created, revoked)


class KeyStore:
    """Keys in the gateway's SQLite file (tables ``keys_*``)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else sqlite.default_db_path()
        self._conn = sqlite.connect(self.path)
        self._lock = threading.Lock()
        sqlite.migrate(self._conn, "keys_migrations", MIGRATIONS)

    def create(self, tenant: str, *, routes: Iterable[str] = (), limits: Limits | None = None) -> NewKey:
        if not _TENANT.match(tenant):
            raise ValueError(f"tenant must be 1-128 characters of letters, digits and _.@:- ; got {tenant!r}")
        route_list = sorted({r.strip() for r in routes if r.strip()})
        lim = limits or Limits()
        plaintext = new_plaintext()
        key = ApiKey(key_id="key_" + secrets.token_hex(8), tenant=tenant,
                     hint=f"{KEY_PREFIX}...{plaintext[-4:]}", routes=tuple(route_list), limits=lim,
                     created_at=_now())
        with self._lock, sqlite.immediate(self._conn) as c:
            c.execute(f"INSERT INTO keys_api_keys ({_COLUMNS}, key_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (key.key_id, key.tenant, key.hint, json.dumps(route_list), lim.rpm, lim.tpm,
                       lim.usd_per_day, lim.usd_per_month, key.created_at, None, hash_key(plaintext)))
        return NewKey(key, plaintext)

    def list(self, *, tenant: str | None = None, include_revoked: bool = True) -> list[ApiKey]:
        sql, args = f"SELECT {_COLUMNS} FROM keys_api_keys WHERE 1 = 1", []
        if tenant is not None:
            sql, args = sql + " AND tenant = ?", [tenant]
        if not include_revoked:
            sql += " AND revoked_at IS NULL"
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at, key_id", args).fetchall()
        return [_row_to_key(r) for r in rows]

    def get(self, key_id: str) -> ApiKey | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM keys_api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return _row_to_key(row) if row else None

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke now (idempotent: revoking twice keeps the first time). Raises NotFound."""
        with self._lock, sqlite.immediate(self._conn) as c:
            c.execute("UPDATE keys_api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                      (_now(), key_id))
            row = c.execute(f"SELECT {_COLUMNS} FROM keys_api_keys WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        return _row_to_key(row)

    def lookup_by_plaintext(self, plaintext: str) -> ApiKey | None:
        """The key (revoked or not) whose hash matches, or None."""
        if not _KEY_SHAPE.match(plaintext):
            return None
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM keys_api_keys WHERE key_hash = ?",
                                     (hash_key(plaintext),)).fetchone()
        return _row_to_key(row) if row else None

    def authenticate(self, plaintext: str | None, route: str | None = None) -> ApiKey:
        """The active key for a bearer token, allowed on ``route`` if given.
        Raises AuthenticationFailed (missing, unknown or revoked) or PermissionDenied (route)."""
        if not plaintext:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer tk-...'")
        key = self.lookup_by_plaintext(plaintext)
        if key is None:
            raise AuthenticationFailed("invalid API key")
        if not key.active:
            raise AuthenticationFailed(f"API key {key.key_id} was revoked at {key.revoked_at}")
        if route is not None and not key.allows(route):
            raise PermissionDenied(f"API key {key.key_id} may not use route {route!r} "
                                   f"(allowed: {', '.join(key.routes)})", code="route_not_allowed")
        return key

    async def aauthenticate(self, plaintext: str | None, route: str | None = None) -> ApiKey:
        return await asyncio.to_thread(self.authenticate, plaintext, route)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
