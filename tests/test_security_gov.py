"""Governance, round two (issue 23: M2, M4, M5, L4, L8, L11), over real processes on loopback:

- M2: the config view masks every form of credential in a DSN or URL;
- M4: an admin key administers its own tenant (an all-tenants admin, the operator's, every
  tenant); a ``metrics`` key reads /metrics of every tenant and nothing else; four eyes
  compares the keys' owners;
- M5: callers without a valid key are counted and logged, never stored in the ledger or audit log;
- L4: a 503 names each hop's engine and kind of failure, never an address or a variable name;
- L8: a store that ever held a key is served ``keys``, also after every key was revoked;
- L11: two Authorization headers, duplicate JSON keys: 400; a trailing slash: 404, no redirect.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_DSN, Upstream
from tests.keyed import Keyed, cli, cli_key, frontier_config, keyed_gateway, serve, write_config
from turnout.governance.access import Access
from turnout.governance.keys import MIGRATIONS, KeyStore, hash_key, new_plaintext, same_person
from turnout.governance.limits import MemoryLimiter
from turnout.server.admin import masked

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
UNSET = "TURNOUT_TEST_GOV_UNSET_KEY"
SECRET = "s3cr3t-M2"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DEAD_PORT = _closed_port()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("gov")
    cfg = frontier_config(upstream.url, tmp)
    frontier = cfg["engines"]["frontier"]
    cfg["engines"]["nokey"] = {**frontier, "base_url": "http://nokey.internal.example:9/v1", "api_key_env": UNSET}
    cfg["engines"]["dead"] = {**frontier, "base_url": f"http://127.0.0.1:{DEAD_PORT}/v1"}
    cfg["routes"]["broken"] = {"chain": ["nokey", "dead"]}
    config = write_config(tmp, cfg)
    keys = {"admin": cli_key(config, "ops", "--roles", "admin"),
            "a-admin-cli": cli_key(config, "team-a", "--roles", "admin"),  # the operator's, filed under team-a
            "a-user": cli_key(config, "team-a"), "a-viewer": cli_key(config, "team-a", "--roles", "viewer"),
            "b-user": cli_key(config, "team-b"),
            "metrics": cli_key(config, "monitoring", "--roles", "metrics"),
            "revoked": cli_key(config, "team-a")}
    assert cli(config, "revoke", keys["revoked"]["key_id"]).returncode == 0
    with keyed_gateway(config, keys) as g:
        made = g.call("POST", "/v1/turnout/keys", "admin", {"tenant": "team-a", "roles": ["admin"]})
        assert made.status_code == 201 and made.json()["all_tenants"] is False, made.text
        g.keys["a-admin"] = made.json()  # a tenant's admin: made through the API
        yield g


def _db(g: Keyed) -> Path:
    return g.config.parent / "turnout.sqlite"


def _count(g: Keyed, table: str) -> int:
    conn = sqlite3.connect(_db(g))
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


# ---- L8: a store that ever held a key never opens ------------------------------------------------
@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_store_whose_keys_are_all_gone_still_starts_in_keys_mode(tmp_path: Path, upstream: Upstream,
                                                                  how: str) -> None:
    cfg = frontier_config(upstream.url, tmp_path)
    del cfg["auth"]  # unset: decided from the store at start-up
    config = write_config(tmp_path, cfg)
    if how == "revoked":
        made = cli_key(config, "team-a")
        assert cli(config, "revoke", made["key_id"]).returncode == 0
    else:
        made = cli_key(config, "team-a", "--expires", "2020-01-01T00:00:00")
    with serve(config, "--host", "127.0.0.1") as proc:
        assert "auth: keys (1 API key(s) in the store" in proc.output()
        g = Keyed(proc, config, {"gone": made})
        for who in (None, "gone"):
            r = g.call("POST", "/v1/chat/completions", who, CHAT)
            assert r.status_code == 401, (who, r.text)
        assert g.call("GET", "/v1/dashboard/stats", None).status_code == 401


def test_an_empty_store_still_starts_open_on_loopback(tmp_path: Path, upstream: Upstream) -> None:
    cfg = frontier_config(upstream.url, tmp_path)
    del cfg["auth"]
    config = write_config(tmp_path, cfg)
    with serve(config, "--host", "127.0.0.1") as proc:
        assert "auth: open" in proc.output()
        assert httpx.post(proc.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200


# ---- M2: every form of credential in a DSN or URL is masked ------------------------------------
DSNS = {
    "url userinfo": (f"postgresql://app:{SECRET}@db:5432/t", "postgresql://app:***@db:5432/t"),
    "url userinfo with unescaped @ and /": (f"postgresql://app:{SECRET}@x/y@db:5432/t", "postgresql://app:***@db:5432/t"),
    "url multi-host": (f"postgresql://app:{SECRET}@h1:5432,[::1]:5433/t", "postgresql://app:***@h1:5432,[::1]:5433/t"),
    "url query password": (f"postgresql://db/t?user=app&password={SECRET}&sslmode=require",
                           "postgresql://db/t?user=app&password=***&sslmode=require"),
    "url query sslpassword": (f"postgresql:///t?host=/tmp&sslpassword={SECRET}", "postgresql:///t?host=/tmp&sslpassword=***"),
    "redis": (f"redis://:{SECRET}@r:6379/0", "redis://:***@r:6379/0"),
    "keyword": (f"host=db password={SECRET} dbname=t", "host=db password=*** dbname=t"),
    "keyword quoted, spaces, escapes": (f"host=db password = '{SECRET} x\\' y' dbname=t",
                                        "host=db password = *** dbname=t"),
    "keyword sslpassword, upper case": (f"host=db SSLPASSWORD={SECRET} dbname=t", "host=db SSLPASSWORD=*** dbname=t"),
}


@pytest.mark.parametrize("form", DSNS)
def test_config_view_masks_every_credential_form(form: str) -> None:
    dsn, want = DSNS[form]
    shown = masked({"storage": {"postgres_dsn": dsn}, "engines": {"e": {"base_url": dsn, "api_key_env": "OPENAI_KEY"}},
                    "n": 3, "names": [dsn]})
    assert SECRET not in str(shown) and "y'" not in str(shown)
    assert shown["storage"]["postgres_dsn"] == want and shown["names"] == [want]
    assert shown["engines"]["e"]["api_key_env"] == "OPENAI_KEY" and shown["n"] == 3  # a variable's name is no secret


def test_config_view_leaves_what_holds_no_credential() -> None:
    for plain in ("https://api.example/v1", "host=db dbname=t user=app", "postgresql://app@db/t", "max_tokens=5"):
        assert masked({"x": plain}) == {"x": plain}
    assert masked({"redis_password": "pw", "api_token": "t"}) == {"redis_password": "***", "api_token": "***"}


def test_config_view_over_http_masks_a_keyword_form_postgres_password(tmp_path: Path, upstream: Upstream,
                                                                        pg_schema: str) -> None:
    from urllib.parse import urlsplit

    u = urlsplit(PG_DSN)
    dsn = (f"host={u.hostname} port={u.port or 5432} dbname={u.path.lstrip('/')} user={u.username} "
           f"password='{SECRET} quoted'")  # PostgreSQL here trusts loopback: the password is never checked
    cfg = frontier_config(upstream.url, tmp_path, storage={"postgres_dsn": dsn, "postgres_schema": pg_schema,
                                                           "sqlite_path": str(tmp_path / "t.sqlite")})
    config = write_config(tmp_path, cfg)
    with keyed_gateway(config, {"admin": cli_key(config, "ops", "--roles", "admin")}) as g:
        r = g.call("GET", "/v1/turnout/config", "admin")
        assert r.status_code == 200 and SECRET not in r.text and "quoted" not in r.text
        assert r.json()["storage"]["postgres_dsn"].endswith("password=***")
