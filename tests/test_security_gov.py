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
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_DSN, Upstream
from tests.keyed import Keyed, cli, cli_key, frontier_config, keyed_gateway, serve, write_config
from turnout.governance.access import Access
from turnout.governance.key_store import MIGRATIONS, SQLiteKeyStore
from turnout.governance.keys import hash_key, new_plaintext, same_person
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


# ---- M4: tenant admins, the operator's all-tenants admin, the metrics role, owners ------------
def test_a_tenant_admin_manages_its_own_tenant_only(gw: Keyed) -> None:
    ok = gw.call("POST", "/v1/turnout/keys", "a-admin", {"tenant": "team-a", "roles": ["user", "approver"],
                                                         "owner": "dana@team-a.example"})
    assert ok.status_code == 201 and ok.json()["owner"] == "dana@team-a.example" and not ok.json()["all_tenants"]
    assert gw.call("POST", "/v1/chat/completions", ok.json()["key"], CHAT).status_code == 200
    listed = gw.call("GET", "/v1/turnout/keys?tenant=team-b", "a-admin").json()["data"]
    assert listed and {k["tenant"] for k in listed} == {"team-a"}  # ?tenant= of another tenant: still its own
    for body in ({"tenant": "team-b"}, {"tenant": "team-a", "roles": ["metrics"]}):
        r = gw.call("POST", "/v1/turnout/keys", "a-admin", body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_not_allowed", body
    other = gw.keys["b-user"]["key_id"]
    for method, path in (("DELETE", f"/v1/turnout/keys/{other}"), ("POST", f"/v1/turnout/keys/{other}/rotate")):
        r = gw.call(method, path, "a-admin", {} if method == "POST" else None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"  # as if it did not exist
    operator = gw.keys["a-admin-cli"]["key_id"]  # in team-a, but the operator's: no rotation into its secret
    r = gw.call("POST", f"/v1/turnout/keys/{operator}/rotate", "a-admin", {})
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_not_allowed"
    assert gw.call("DELETE", f"/v1/turnout/keys/{operator}", "a-admin").status_code == 403
    assert gw.call("POST", "/v1/chat/completions", "b-user", CHAT).status_code == 200  # untouched
    rotated = gw.call("POST", f"/v1/turnout/keys/{ok.json()['key_id']}/rotate", "a-admin", {"overlap_s": 0})
    assert rotated.status_code == 200
    assert gw.call("DELETE", f"/v1/turnout/keys/{ok.json()['key_id']}", "a-admin").status_code == 200
    r = gw.call("GET", "/v1/turnout/config", "a-admin")
    assert r.status_code == 403 and r.json()["error"]["code"] == "all_tenants_only"
    usage = gw.call("GET", "/v1/turnout/usage?tenant=team-b", "a-admin").json()
    assert usage["tenant"] == "team-a"  # figures of its own tenant only


def test_the_operators_admin_manages_every_tenant(gw: Keyed) -> None:
    r = gw.call("POST", "/v1/turnout/keys", "admin", {"tenant": "team-b", "roles": ["metrics"]})
    assert r.status_code == 201 and r.json()["roles"] == ["metrics"]
    assert gw.call("DELETE", f"/v1/turnout/keys/{r.json()['key_id']}", "admin").status_code == 200
    assert gw.call("GET", "/v1/turnout/config", "admin").status_code == 200
    tenants = {k["tenant"] for k in gw.call("GET", "/v1/turnout/keys", "admin").json()["data"]}
    assert {"ops", "team-a", "team-b", "monitoring"} <= tenants
    assert gw.call("GET", "/v1/turnout/usage", "admin").json()["tenant"] is None  # every tenant


def test_a_metrics_key_scrapes_every_tenant_and_does_nothing_else(gw: Keyed) -> None:
    for who in ("a-user", "b-user"):
        assert gw.call("POST", "/v1/chat/completions", who, CHAT).status_code == 200
    scraped = gw.call("GET", "/metrics", "metrics")
    assert scraped.status_code == 200
    assert 'tenant="team-a"' in scraped.text and 'tenant="team-b"' in scraped.text
    viewer = gw.call("GET", "/metrics", "a-viewer").text
    assert 'tenant="team-a"' in viewer and 'tenant="team-b"' not in viewer  # a viewer: its tenant only
    for method, path, body in (("POST", "/v1/chat/completions", CHAT), ("GET", "/v1/turnout/usage", None),
                               ("GET", "/v1/dashboard/stats", None), ("GET", "/v1/models", None),
                               ("GET", "/v1/turnout/keys", None), ("GET", "/v1/turnout/approvals", None)):
        r = gw.call(method, path, "metrics", body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "role_not_allowed", path


def test_admin_keys_made_before_all_tenants_existed_stay_the_operators(tmp_path: Path) -> None:
    """Migration 0003: every admin key of an older store keeps managing every tenant; others do not."""
    from turnout import sqlitedb

    db = tmp_path / "old.sqlite"
    conn = sqlitedb.connect(db)
    sqlitedb.migrate(conn, "keys_migrations", MIGRATIONS[:2])
    plain = {}
    for key_id, roles in (("key_admin", '["admin"]'), ("key_user", '["user"]'), ("key_both", '["admin", "user"]')):
        plain[key_id] = new_plaintext()
        conn.execute("INSERT INTO keys_api_keys (key_id, key_hash, hint, tenant, created_at, roles) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (key_id, hash_key(plain[key_id]), "tk-...", "ops",
                                                   "2026-01-01T00:00:00+00:00", roles))
        conn.execute("INSERT INTO keys_secrets (key_hash, key_id, hint, created_at) VALUES (?, ?, ?, ?)",
                     (hash_key(plain[key_id]), key_id, "tk-...", "2026-01-01T00:00:00+00:00"))
    conn.commit()
    conn.close()
    with SQLiteKeyStore(db) as s:
        assert {k.key_id: k.all_tenants for k in s.list()} == {"key_admin": True, "key_user": False,
                                                                "key_both": True}
        assert s.authenticate(plain["key_admin"]).all_tenants and s.get("key_user").owner is None  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="admin"):
            s.create("ops", roles=["viewer"], all_tenants=True)


def test_cli_admin_keys_are_the_operators_unless_tenant_only(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path, frontier_config(upstream.url, tmp_path))
    op = cli_key(config, "ops", "--roles", "admin", "--owner", "ops-lead")
    tenant = cli_key(config, "team-a", "--roles", "admin", "--tenant-only")
    user = cli_key(config, "team-a", "--owner", "alice@team-a.example")
    assert op["all_tenants"] is True and op["owner"] == "ops-lead"
    assert tenant["all_tenants"] is False and user["all_tenants"] is False and user["owner"] == "alice@team-a.example"
    listed = cli(config, "list").stdout
    assert "ops (all)" in listed and "alice@team-a.example" in listed
    bad = cli(config, "create", "--tenant", "t", "--owner", "no spaces please")
    assert bad.returncode == 2 and "owner" in bad.stderr


def test_four_eyes_compares_owners(tmp_path: Path) -> None:
    async def go() -> None:
        with SQLiteKeyStore(tmp_path / "k.sqlite") as keys:
            access = Access(keys, MemoryLimiter(), mode="keys")
            alice = keys.create("acme", owner="alice").key
            alice_approver = keys.create("acme", roles=["approver"], owner="alice").key
            bob = keys.create("acme", roles=["approver"], owner="bob").key
            anon_a, anon_b = keys.create("acme").key, keys.create("acme", roles=["approver"]).key
            assert same_person(alice, alice_approver) and same_person(anon_a, anon_a)
            assert not same_person(alice, bob) and not same_person(anon_a, anon_b)
            assert not same_person(alice, anon_b) and not same_person(anon_b, alice)  # one owner unset: by key
            assert await access.same_person(alice_approver, alice.key_id)
            assert not await access.same_person(bob, alice.key_id)
            assert await access.same_person(anon_a, anon_a.key_id) and not await access.same_person(anon_b, None)

    asyncio.run(go())


def test_four_eyes_over_http_refuses_a_second_key_of_the_same_person(tmp_path: Path) -> None:
    from tests.test_tasks import MAIL, TRIAGE, config, script, wait_state
    from turnout.testing.procs import start_server

    with start_server("turnout.testing.upstream", "--port", "0", add_port=False) as fake, \
            start_server("turnout.testing.toolbox", "--port", "0", add_port=False) as toolbox:
        script(fake, TRIAGE)
        path = write_config(tmp_path, config(fake.url, toolbox.url, tmp_path))
        keys = {"alice": cli_key(path, "acme", "--owner", "alice"),
                "alice-approver": cli_key(path, "acme", "--roles", "approver", "--owner", "alice"),
                "bob": cli_key(path, "acme", "--roles", "approver", "--owner", "bob")}
        with keyed_gateway(path, keys) as g:
            tid = g.call("POST", "/v1/turnout/tasks", "alice", {"goal": "answer the mail", "inputs": MAIL,
                                                               "tools": ["send_email"]}).json()["id"]
            wait_state(g, tid, "awaiting_approval")
            gid = g.call("GET", "/v1/turnout/approvals", "bob").json()["data"][0]["id"]
            r = g.call("POST", f"/v1/turnout/approvals/{gid}", "alice-approver", {"decision": "approve"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "four_eyes"
            r = g.call("POST", f"/v1/turnout/approvals/{gid}", "bob", {"decision": "approve"})
            assert r.status_code == 200 and r.json()["state"] == "approved"


# ---- L4: what a 503 tells a caller ----------------------------------------------------------------
def test_a_503_names_each_hops_kind_never_an_address_or_variable(gw: Keyed) -> None:
    for stream in (False, True):
        r = gw.call("POST", "/v1/chat/completions", "a-user", {**CHAT, "model": "broken", "stream": stream})
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "all_engines_failed"
        assert "nokey: engine_unavailable (not started" in err["message"], err
        assert "dead: engine_unavailable (cannot connect)" in err["message"], err
        for leak in (UNSET, "api_key_env", "nokey.internal.example", str(DEAD_PORT), "http://", "127.0.0.1"):
            assert leak not in r.text, (leak, r.text)
    conn = sqlite3.connect(_db(gw))
    hops = conn.execute("SELECT hops FROM requests WHERE request_id = ?", (r.headers["x-request-id"],)).fetchone()[0]
    conn.close()
    assert UNSET in hops and str(DEAD_PORT) in hops  # the operator's detail stays in the ledger


# ---- M5: callers without a valid key leave no stored trace --------------------------------------
def test_refusals_without_a_valid_key_are_counted_not_stored(gw: Keyed) -> None:
    rows, entries = _count(gw, "requests"), _count(gw, "audit_entries")
    before = gw.call("GET", "/metrics", "metrics").text
    callers: list[dict[str, str]] = [{}, {"Authorization": "Bearer tk-" + "Z" * 43},
                                     {"Authorization": "Bearer " + gw.keys["revoked"]["key"]},
                                     {"Authorization": "Basic !!"}]
    sent = 0
    for i in range(60):
        headers = callers[i % len(callers)]
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
        assert r.status_code == 401, r.text
        sent += 1
    for body in (b"{not json", b"[]"):  # refused before any key was checked
        r = httpx.post(gw.url + "/v1/chat/completions", content=body, timeout=30,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 400
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": "auto", "input": "x"}, timeout=30)
    assert r.status_code == 401
    assert _count(gw, "requests") == rows and _count(gw, "audit_entries") == entries  # nothing stored
    after = gw.call("GET", "/metrics", "metrics").text

    def counted(text: str, status: str) -> float:
        m = re.search(rf'^turnout_unauthenticated_total\{{status="{status}"\}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    assert counted(after, "401") - counted(before, "401") >= sent + 1
    assert counted(after, "400") - counted(before, "400") >= 2
    lines = [x for x in gw.proc.output().splitlines() if "refused without a valid API key" in x]
    assert 1 <= len(lines) <= 3, lines  # one summary line per 10 s, not one per request
    # a valid key is still recorded, its refusals too: a bad body under its own tenant
    r = httpx.post(gw.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                   headers={"Authorization": f"Bearer {gw.keys['a-user']['key']}", "Content-Type": "application/json"})
    assert r.status_code == 400
    conn = sqlite3.connect(_db(gw))
    row = conn.execute("SELECT tenant, key_id, http_status FROM requests WHERE request_id = ?",
                       (r.headers["x-request-id"],)).fetchone()
    conn.close()
    assert row == ("team-a", gw.keys["a-user"]["key_id"], 400)


# ---- L11: ambiguous requests are refused ---------------------------------------------------------
def test_two_authorization_headers_are_a_400(gw: Keyed) -> None:
    good, other = gw.keys["a-user"]["key"], gw.keys["b-user"]["key"]
    admin = gw.keys["admin"]["key"]
    for path, method, body in (("/v1/chat/completions", "POST", CHAT), ("/v1/turnout/usage", "GET", None),
                               ("/v1/turnout/keys", "GET", None)):
        for pair in ((good, other), (good, good), ("tk-" + "Q" * 43, admin), (admin, "tk-" + "Q" * 43)):
            headers = [("Authorization", f"Bearer {pair[0]}"), ("Authorization", f"Bearer {pair[1]}")]
            r = httpx.request(method, gw.url + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_header", (path, r.text)
    viewer = gw.keys["a-viewer"]["key"]
    for pair in ((viewer, "tk-" + "Q" * 43), ("tk-" + "Q" * 43, viewer)):  # public /readyz: no details either way
        r = httpx.get(gw.url + "/readyz", timeout=30,
                      headers=[("Authorization", f"Bearer {pair[0]}"), ("Authorization", f"Bearer {pair[1]}")])
        assert r.status_code == 503 and "detail" not in r.json()["engines"]["nokey"], r.text
    assert "detail" in gw.call("GET", "/readyz", "a-viewer").json()["engines"]["nokey"]
    assert gw.call("POST", "/v1/chat/completions", "a-user", CHAT).status_code == 200  # one header: served
    assert gw.call("GET", "/v1/turnout/keys", "admin").status_code == 200


DUPLICATE_BODIES = {
    ("POST", "/v1/chat/completions", "a-user"): b'{"model": "auto", "max_tokens": 8, "messages": '
                                                b'[{"role": "user", "content": "a", "content": "b"}]}',
    ("POST", "/v1/embeddings", "a-user"): b'{"model": "auto", "input": "a", "input": "b"}',
    ("POST", "/v1/feedback", "a-user"): b'{"request_id": "x", "request_id": "y", "score": "up"}',
    ("POST", "/v1/turnout/collections/c/search", "a-user"): b'{"query": "a", "query": "b"}',
    ("POST", "/v1/turnout/tasks", "a-user"): b'{"goal": "a", "goal": "b"}',
    ("POST", "/v1/turnout/keys", "admin"): b'{"tenant": "team-a", "roles": ["user"], "roles": ["admin"]}',
    ("POST", "/v1/turnout/keys/{rotate}/rotate", "admin"): b'{"overlap_s": 1, "overlap_s": 2}',
}


@pytest.mark.parametrize("where", DUPLICATE_BODIES, ids=lambda w: f"{w[0]} {w[1]}")
def test_a_json_body_naming_a_key_twice_is_a_400(gw: Keyed, where: tuple[str, str, str]) -> None:
    method, path, who = where
    path = path.format(rotate=gw.keys["a-user"]["key_id"])
    r = httpx.request(method, gw.url + path, content=DUPLICATE_BODIES[where], timeout=30,
                      headers={"Authorization": f"Bearer {gw.token(who)}", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "duplicate_key" and err["type"] == "invalid_request_error", err


def test_finding_the_repeated_key_of_a_huge_object_takes_linear_time(gw: Keyed) -> None:
    """200,000 keys and the repeat at the end: the quadratic search this replaced took 45 s for half as many."""
    body = ('{"model": "auto", "metadata": {' + ",".join(f'"k{i}": 1' for i in range(200_000)) + ', "k0": 2}}').encode()
    t0 = time.monotonic()
    r = httpx.post(gw.url + "/v1/chat/completions", content=body, timeout=600,
                   headers={"Authorization": f"Bearer {gw.keys['a-user']['key']}", "Content-Type": "application/json"})
    took = time.monotonic() - t0
    assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_key" and "'k0'" in r.text
    assert took < 20, took  # 0.2 s here; the quadratic search: about 3 minutes


def test_a_body_nested_deeper_than_the_duplicate_check_goes_is_a_400_not_a_500(gw: Keyed) -> None:
    for depth in (990, 1000, 1023):  # orjson parses these; the duplicate check's parser recurses less deep
        body = b'{"model": "auto", "messages": ' + b"[" * depth + b"]" * depth + b"}"
        r = httpx.post(gw.url + "/v1/chat/completions", content=body, timeout=30,
                       headers={"Authorization": f"Bearer {gw.keys['a-user']['key']}",
                                "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_json", "invalid_value"), depth


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(gw: Keyed) -> None:
    for method, path in (("GET", "/v1/models/"), ("POST", "/v1/chat/completions/"), ("GET", "/v1/turnout/usage/"),
                         ("GET", "/healthz/")):
        r = httpx.request(method, gw.url + path, json=CHAT if method == "POST" else None, timeout=30,
                          headers={"Host": "evil.example", "Authorization": f"Bearer {gw.keys['admin']['key']}"})
        assert r.status_code == 404 and "location" not in r.headers, (path, r.status_code, r.headers)
        assert r.json()["error"]["type"] == "not_found_error"
