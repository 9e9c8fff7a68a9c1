"""The key store's security properties on real SQLite and PostgreSQL: roles, expiry, rotation
with an overlap window, the auth mode decided at start-up, and the Authorization header
parser under property-based fuzzing (no exception, no key from nothing)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import PG_DSN
from tests.runcli import run_cli
from turnout.errors import AuthenticationFailed, NotFound, PermissionDenied
from turnout.governance.access import OPEN, Access, resolve_mode, token_from
from turnout.governance.key_store import KeyTables, PostgresKeyStore, SQLiteKeyStore
from turnout.governance.keys import parse_expiry
from turnout.governance.limits import MemoryLimiter


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyTables]:
    if request.param == "sqlite":
        with SQLiteKeyStore(tmp_path / "k.sqlite") as s:
            yield s
        return
    schema = request.getfixturevalue("pg_schema")
    with PostgresKeyStore(PG_DSN, schema=schema) as s:
        yield s


def test_roles_expiry_and_revocation(store: KeyTables) -> None:
    admin = store.create("ops", roles=["admin"])
    user = store.create("acme")
    assert user.key.roles == ("user",) and admin.key.roles == ("admin",)
    assert admin.key.has_role("viewer") and not admin.key.has_role("user")  # admin sees figures, does no inference
    with pytest.raises(ValueError, match="roles"):
        store.create("acme", roles=["root"])
    with pytest.raises(ValueError, match="roles"):
        store.create("acme", roles=[])
    past = store.create("acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(AuthenticationFailed, match="expired") as exc:
        store.authenticate(past.plaintext)
    assert exc.value.code == "key_expired"
    future = store.create("acme", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert store.authenticate(future.plaintext).key_id == future.key.key_id
    assert store.lookup_by_plaintext(user.plaintext) == store.get(user.key.key_id)
    store.revoke(user.key.key_id)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        store.authenticate(user.plaintext)


def test_rotation_keeps_the_old_secret_for_the_overlap_only(store: KeyTables) -> None:
    first = store.create("acme", roles=["user", "viewer"])
    second = store.rotate(first.key.key_id, overlap_s=3600)
    assert second.plaintext != first.plaintext and second.key.key_id == first.key.key_id
    assert second.key.roles == ("user", "viewer") and second.key.tenant == "acme"
    old = store.authenticate(first.plaintext)  # inside the overlap: both work, as the same key id
    assert old.key_id == first.key.key_id and old.expires_at is not None
    assert store.authenticate(second.plaintext).expires_at is None  # the new secret does not expire
    third = store.rotate(first.key.key_id, overlap_s=0)  # no overlap: both earlier secrets stop now
    for gone in (first.plaintext, second.plaintext):
        with pytest.raises(AuthenticationFailed, match="expired"):
            store.authenticate(gone)
    assert store.authenticate(third.plaintext).key_id == first.key.key_id
    assert [k.key_id for k in store.list()] == [first.key.key_id]  # still one key
    with pytest.raises(NotFound):
        store.rotate("key_missing")
    store.revoke(first.key.key_id)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        store.authenticate(third.plaintext)
    with pytest.raises(PermissionDenied, match="revoked"):
        store.rotate(first.key.key_id)


def test_keys_made_before_roles_migrate_to_user_role(tmp_path: Path) -> None:
    """A file written by the first schema (no roles, no secrets table) keeps its keys working, as users."""
    import sqlite3

    from turnout import sqlitedb
    from turnout.governance.key_store import MIGRATIONS
    from turnout.governance.keys import hash_key, new_plaintext

    db = tmp_path / "old.sqlite"
    conn = sqlitedb.connect(db)
    sqlitedb.migrate(conn, "keys_migrations", MIGRATIONS[:1])
    plain = new_plaintext()
    conn.execute("INSERT INTO keys_api_keys (key_id, key_hash, hint, tenant, created_at) VALUES (?, ?, ?, ?, ?)",
                 ("key_old", hash_key(plain), "tk-...", "legacy", "2026-01-01T00:00:00+00:00"))
    conn.close()
    with SQLiteKeyStore(db) as s:
        key = s.authenticate(plain)
        assert key.key_id == "key_old" and key.roles == ("user",) and key.tenant == "legacy"
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM keys_secrets").fetchone() == (1,)


def test_auth_mode_is_decided_at_start_up() -> None:
    assert resolve_mode("keys", False, 0)[0] == "keys"  # keys mode with no key at all: everyone gets 401
    assert resolve_mode("open", True, 5)[0] == "open"
    with pytest.raises(ValueError, match="loopback"):
        resolve_mode("open", False, 0)
    assert resolve_mode(None, True, 0)[0] == "open"    # the embedded quick start
    assert resolve_mode(None, True, 1)[0] == "keys"    # a store with keys is never served open by default
    assert resolve_mode(None, False, 1)[0] == "keys"
    with pytest.raises(ValueError, match="no API keys"):
        resolve_mode(None, False, 0)


def test_keys_mode_stays_closed_when_every_key_is_revoked(tmp_path: Path) -> None:
    async def go() -> None:
        with SQLiteKeyStore(tmp_path / "k.sqlite") as keys:
            access = Access(keys, MemoryLimiter(), mode="keys", ttl=0.0)
            new = keys.create("acme")
            assert (await access.authenticate(new.plaintext, "auto")) is not None
            keys.revoke(new.key.key_id)
            assert keys.list(include_revoked=False) == []
            for token in (new.plaintext, None, ""):
                with pytest.raises(AuthenticationFailed):
                    await access.authenticate(token, "auto")
            viewer = keys.create("acme", roles=["viewer"])
            with pytest.raises(PermissionDenied, match="role"):
                await access.authenticate(viewer.plaintext, "auto")  # inference needs the user role
            opened = Access(keys, MemoryLimiter(), mode="open")
            assert await opened.principal(None, ("admin",)) == OPEN

    asyncio.run(go())


def test_parse_expiry() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expiry("30d", now) == now + timedelta(days=30)
    assert parse_expiry("90m", now) == now + timedelta(minutes=90)
    assert parse_expiry("2027-01-01T00:00:00", now) == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="duration"):
        parse_expiry("soon", now)


def test_token_from_reads_bearer_never_basic() -> None:
    key = "tk-" + "a" * 43
    assert token_from(f"Bearer {key}") == key and token_from(f"bearer   {key}  ") == key
    # Basic credentials are ambient in a browser (sent from any page): no credential (issue 23, H2)
    assert token_from("Basic " + base64.b64encode(f"me:{key}".encode()).decode()) is None
    for nothing in (None, "", "Bearer", "Bearer   ", "Token abc",
                    "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert token_from(nothing) is None


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_token_from_never_raises(header: str) -> None:
    out = token_from(header)
    assert out is None or (isinstance(out, str) and out)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), st.from_regex(r"tk-[A-Za-z0-9_-]{43}", fullmatch=True),
                 st.binary(max_size=64).map(lambda b: "Basic " + base64.b64encode(b).decode())))
def test_no_token_authenticates_against_a_store_it_was_not_issued_by(tmp_path_factory: pytest.TempPathFactory,
                                                                      token: str) -> None:
    db = tmp_path_factory.getbasetemp() / "fuzz-keys.sqlite"
    with SQLiteKeyStore(db) as keys:
        if not keys.list():
            keys.create("acme")
        with pytest.raises(AuthenticationFailed):
            keys.authenticate(token_from(token) or token)


def test_keys_copied_from_sqlite_to_postgres_keep_working(tmp_path: Path, pg_schema: str) -> None:
    with SQLiteKeyStore(tmp_path / "old.sqlite") as old:
        kept = old.create("acme", roles=["user", "viewer"])
        rotated = old.rotate(kept.key.key_id, overlap_s=600)
        gone = old.create("acme")
        old.revoke(gone.key.key_id)
        with PostgresKeyStore(PG_DSN, schema=pg_schema) as pg:
            assert pg.copy_from(old) == 2 and pg.copy_from(old) == 0  # idempotent
            assert pg.authenticate(kept.plaintext).roles == ("user", "viewer")  # old secret, in its overlap
            assert pg.authenticate(rotated.plaintext).key_id == kept.key.key_id
            with pytest.raises(AuthenticationFailed, match="revoked"):
                pg.authenticate(gone.plaintext)


def test_keys_cli_dsn_writes_to_postgres(pg_schema: str) -> None:
    import json
    import subprocess

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("keys", "--dsn", PG_DSN, "--schema", pg_schema, *args)

    made = json.loads(cli("create", "--tenant", "acme", "--roles", "viewer", "--expires", "30d", "--json").stdout)
    with PostgresKeyStore(PG_DSN, schema=pg_schema) as pg:
        key = pg.authenticate(made["key"])
        assert key.roles == ("viewer",) and key.expires_at is not None
    rotated = json.loads(cli("rotate", made["key_id"], "--overlap", "0s", "--json").stdout)
    listed = cli("list")
    assert listed.returncode == 0 and made["key_id"] in listed.stdout and "viewer" in listed.stdout
    with PostgresKeyStore(PG_DSN, schema=pg_schema) as pg:
        with pytest.raises(AuthenticationFailed, match="expired"):
            pg.authenticate(made["key"])
        assert pg.authenticate(rotated["key"]).key_id == made["key_id"]
    assert (cli("rotate", "key_nope").returncode == 1
            and cli("create", "--tenant", "x", "--roles", "root").returncode == 2)


def test_postgres_key_store_reconnects_after_a_dropped_connection(pg_schema: str) -> None:
    with PostgresKeyStore(PG_DSN, schema=pg_schema) as pg:
        made = pg.create("acme")
        pg.pg.conn.close()  # a server restart or idle timeout
        assert pg.authenticate(made.plaintext).tenant == "acme"
        pg.pg.conn.close()
        assert pg.create("acme").key.tenant == "acme"  # writes reconnect too
