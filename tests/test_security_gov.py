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
