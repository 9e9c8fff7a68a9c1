"""Browser sessions: what a person logged in to the dashboard pages holds instead of a key.

A browser must never hold an ambient credential that works everywhere (HTTP Basic did: the
browser re-sent it to every URL of the site, so another origin's form could approve a gate).
``POST /dashboard/login`` takes an API key once and answers a session cookie
(``turnout.server.session``); ``turnout.server.authz`` accepts that cookie only on the browser
pages and their data endpoints, and for a state change only from the gateway's own origin.

A session id is ``ts-`` followed by 43 URL-safe characters (256 random bits); like a key, the
store keeps only its SHA-256. It lives in the key store (the SQLite file, or PostgreSQL when
``storage.postgres_dsn`` is set, so every replica shares it), in table ``browser_sessions``,
beside the key and the secret it was opened with. It carries that key's tenant and roles (read
through the key at each lookup, never copied), and it dies at the soonest of: its own expiry,
logout, the key's revocation or expiry, the expiry of the secret it was opened with (a rotated
key's old secret). Lookups are cached for ``KEY_CACHE_S`` like keys, so a revocation through
any replica ends the sessions of the key on every replica within that bound.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from turnout import pgdb
from turnout import sqlitedb as sqlite
from turnout.errors import AuthenticationFailed
from turnout.governance import clock
from turnout.governance.access import KEY_CACHE_S
from turnout.governance.epoch import KeyEpoch
from turnout.governance.key_store import KEY_COLUMNS, KEY_NCOL, KeyTables, PostgresKeyStore, SQLiteKeyStore, row_to_key
from turnout.governance.keys import ApiKey, check_key, hash_key

SESSION_PREFIX = "ts-"
_SESSION_SHAPE = re.compile(r"^ts-[A-Za-z0-9_-]{43}$")
COOKIE = "turnout_session"

MIGRATIONS: list[sqlite.Migration] = [
    ("0001_browser_sessions", [
        """CREATE TABLE browser_sessions (
               session_hash TEXT PRIMARY KEY,
               key_id TEXT NOT NULL REFERENCES keys_api_keys (key_id),
               secret_hash TEXT NOT NULL,
               created_at TEXT NOT NULL,
               expires_at TEXT NOT NULL,
               ended_at TEXT)""",
        "CREATE INDEX browser_sessions_expires ON browser_sessions (expires_at)",
    ]),
]


def pg_migrations(s: str) -> list[pgdb.Migration]:
    return [
        ("0001_browser_sessions", [
            f"""CREATE TABLE {s}.browser_sessions (
                   session_hash TEXT PRIMARY KEY,
                   key_id TEXT NOT NULL REFERENCES {s}.keys_api_keys (key_id),
                   secret_hash TEXT NOT NULL,
                   created_at TEXT NOT NULL,
                   expires_at TEXT NOT NULL,
                   ended_at TEXT)""",
            f"CREATE INDEX browser_sessions_expires ON {s}.browser_sessions (expires_at)",
        ]),
    ]


@dataclass(frozen=True, slots=True)
class NewSession:
    """The only object that holds a session id in clear: it goes into the cookie, then is dropped."""

    token: str
    key: ApiKey
    expires_at: str


class Sessions:
    """Sessions in the same store (and connection) as the keys they were opened with."""

    def __init__(self, keys: KeyTables, ttl: float = KEY_CACHE_S, epoch: KeyEpoch | None = None) -> None:
        """``epoch``: shared by the worker processes of one gateway, as ``Access``'s."""
        self.keys, self.ttl = keys, ttl
        self._cache: dict[str, tuple[float, tuple[ApiKey, str] | None]] = {}
        self.epoch, self._seen = epoch, epoch.value() if epoch is not None else 0
        if not isinstance(keys, SQLiteKeyStore | PostgresKeyStore):
            raise TypeError(f"no session table for a key store of type {type(keys).__name__}")
        keys.migrate("sessions_migrations", MIGRATIONS, pg_migrations)

    def open(self, key: ApiKey, secret: str, lifetime_s: float) -> NewSession:
        """A session for ``key`` (an active key that ``secret`` authenticated), ending after
        ``lifetime_s`` seconds or sooner with the key or the secret. Ended and expired sessions
        are deleted on the way."""
        now = clock.now()
        until = clock.sooner(clock.iso(now + timedelta(seconds=lifetime_s)), key.expires_at)
        assert until is not None
        token = SESSION_PREFIX + secrets.token_urlsafe(32)
        at = clock.iso(now)
        with self.keys.tx() as c:
            c.execute("DELETE FROM browser_sessions WHERE expires_at < $1 OR ended_at IS NOT NULL", (at,))
            c.execute("INSERT INTO browser_sessions (session_hash, key_id, secret_hash, created_at, expires_at) "
                      "VALUES ($1, $2, $3, $4, $5)", (hash_key(token), key.key_id, hash_key(secret), at, until))
        return NewSession(token, key, until)

    def end(self, token: str) -> bool:
        """Log out: the session stops working at once on this replica, within ``KEY_CACHE_S``
        on the others. False when there was no such live session."""
        if not _SESSION_SHAPE.match(token):
            return False
        digest = hash_key(token)
        self._cache.pop(digest, None)
        with self.keys.tx() as c:
            ended = bool(c.execute("UPDATE browser_sessions SET ended_at = $1 WHERE session_hash = $2 "
                                   "AND ended_at IS NULL", (clock.iso(clock.now()), digest)).rowcount)
        self._bump()
        return ended

    def forget(self, key_id: str) -> None:
        """Drop this replica's cached sessions of a key (after revoking it here)."""
        self._cache = {d: hit for d, hit in self._cache.items() if hit[1] is None or hit[1][0].key_id != key_id}
        self._bump()

    def _bump(self) -> None:
        """Tell the other workers (an ``epoch``) to drop their cached lookups."""
        if self.epoch is not None:
            self.epoch.bump()
            self._seen = self.epoch.value()

    def _lookup(self, digest: str) -> tuple[ApiKey, str] | None:
        rows = self.keys.read(f"SELECT {KEY_COLUMNS}, s.expires_at, b.expires_at, b.ended_at FROM browser_sessions b "
                               "JOIN keys_api_keys k ON k.key_id = b.key_id "
                               "JOIN keys_secrets s ON s.key_hash = b.secret_hash WHERE b.session_hash = $1",
                               (digest,))
        if not rows:
            return None
        key, (secret_expires, expires, ended) = rows[0][:KEY_NCOL], rows[0][KEY_NCOL:]
        if ended is not None:
            return None
        return row_to_key(key, secret_expires), expires

    async def key(self, token: str) -> ApiKey:
        """The key behind a live session, which must itself still be usable; raises
        AuthenticationFailed (unknown, ended or expired session; revoked or expired key)."""
        found = None
        if self.epoch is not None and (seen := self.epoch.value()) != self._seen:  # ended through another worker
            self._cache.clear()
            self._seen = seen
        if _SESSION_SHAPE.match(token):
            digest, now = hash_key(token), time.monotonic()
            hit = self._cache.get(digest)
            if hit is None or hit[0] < now:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                hit = self._cache[digest] = (now + self.ttl, await asyncio.to_thread(self._lookup, digest))
            found = hit[1]
        if found is None or datetime.fromisoformat(found[1]) <= datetime.now(UTC):
            raise AuthenticationFailed("no live session: it ended (logout) or expired, or never existed; "
                                       "log in again at /dashboard/login", code="session_expired")
        return check_key(found[0])
