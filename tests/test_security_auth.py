"""The auth mode over real sockets: fixed at start-up, never opened by the key table;
`open` refused off loopback; keys made, rotated, expired and revoked through the admin API
take effect; `turnout keys --config` writes to the configuration's store; two replicas on
PostgreSQL + Redis share one key store (a key made on A works on B at once, a key revoked on
B is refused on A within KEY_CACHE_S)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_DSN, Upstream, redis_up
from tests.keyed import Keyed, cli, cli_key, frontier_config, keyed_gateway, serve, write_config
from turnout.governance.access import KEY_CACHE_S

pytestmark = pytest.mark.usefixtures("clean_upstreams")
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def _until(check, limit: float) -> float:  # type: ignore[no-untyped-def]
    """Poll ``check()`` every 50 ms until it holds; the seconds it took (fails after ``limit``)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < limit, f"not within {limit} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_keys_mode_with_no_key_at_all_refuses_everyone(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path, frontier_config(upstream.url, tmp_path))
    with serve(config) as proc:
        assert "auth: keys (from the configuration)" in proc.output()
        gw = Keyed(proc, config)
        for method, path, body in [("POST", "/v1/chat/completions", CHAT), ("GET", "/metrics", None),
                                   ("GET", "/v1/dashboard/stats", None), ("GET", "/v1/turnout/keys", None)]:
            assert gw.call(method, path, None, body).status_code == 401
        assert upstream.requests() == []


def test_revoking_every_key_while_serving_closes_nothing(tmp_path: Path, upstream: Upstream) -> None:
    """The issue's bug: with `Access.is_open()` re-reading the key table, revoking the last key
    opened the gateway. Now the mode is fixed, also when `auth` is unset and keys existed at start."""
    cfg = frontier_config(upstream.url, tmp_path)
    del cfg["auth"]  # unset: keys, because the store holds a key at start-up
    config = write_config(tmp_path, cfg)
    made = cli_key(config, "team-a")
    with serve(config, "--host", "127.0.0.1") as proc:
        assert "auth: keys (1 API key(s) in the store" in proc.output()
        gw = Keyed(proc, config, {"a": made})
        assert gw.call("POST", "/v1/chat/completions", "a", CHAT).status_code == 200
        assert cli(config, "revoke", made["key_id"]).returncode == 0  # through the CLI: another process
        took = _until(lambda: gw.call("POST", "/v1/chat/completions", "a", CHAT).status_code == 401, KEY_CACHE_S + 2)
        print(f"revocation took effect after {took:.2f} s (bound {KEY_CACHE_S} s)")
        for who in (None, "tk-" + "x" * 43):
            r = gw.call("POST", "/v1/chat/completions", who, CHAT)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert gw.call("GET", "/v1/turnout/usage", None).status_code == 401


def test_a_refused_key_is_recorded_under_its_own_tenant(tmp_path: Path, upstream: Upstream) -> None:
    """A valid key without the right route or role gets a 403, and the ledger row names its
    tenant and key (so the tenant's usage shows its refusals), not `anonymous`."""
    import sqlite3

    cfg = frontier_config(upstream.url, tmp_path)
    cfg["routes"]["other"] = {"chain": ["frontier"]}
    config = write_config(tmp_path, cfg)
    narrow = cli_key(config, "team-n", "--routes", "other")
    viewer = cli_key(config, "team-v", "--roles", "viewer")
    with serve(config) as proc:
        gw = Keyed(proc, config, {"narrow": narrow, "viewer": viewer})
        route = gw.call("POST", "/v1/chat/completions", "narrow", CHAT)
        role = gw.call("POST", "/v1/chat/completions", "viewer", CHAT)
        assert route.status_code == 403 and route.json()["error"]["code"] == "route_not_allowed"
        assert role.status_code == 403 and role.json()["error"]["code"] == "role_not_allowed"
        assert upstream.requests() == []
    conn = sqlite3.connect(tmp_path / "turnout.sqlite")
    rows = conn.execute("SELECT request_id, tenant, key_id, http_status FROM requests ORDER BY id").fetchall()
    conn.close()
    assert (route.headers["x-request-id"], "team-n", narrow["key_id"], 403) in rows
    assert (role.headers["x-request-id"], "team-v", viewer["key_id"], 403) in rows


def test_readyz_tells_why_an_engine_is_down_to_a_viewer_only(tmp_path: Path, upstream: Upstream) -> None:
    """/readyz stays public for probes, but the reason an engine is not ready (here: the name of an
    unset key variable) is internal: a viewer or admin key reads it, nobody else."""
    unset = "TURNOUT_TEST_READYZ_UNSET_KEY"
    cfg = frontier_config(upstream.url, tmp_path)
    cfg["engines"]["down"] = {**cfg["engines"]["frontier"], "api_key_env": unset}
    config = write_config(tmp_path, cfg)
    keys = {"viewer": cli_key(config, "team-v", "--roles", "viewer"), "user": cli_key(config, "team-u"),
            "admin": cli_key(config, "ops", "--roles", "admin")}
    with keyed_gateway(config, keys) as gw:
        for who in (None, "user", "tk-not-a-key"):
            r = gw.call("GET", "/readyz", who)
            assert r.status_code == 503 and r.json()["status"] == "degraded", who
            engines = r.json()["engines"]
            assert engines["down"]["ready"] is False and engines["frontier"]["ready"] is True
            assert "detail" not in engines["down"] and unset not in r.text, who
        for who in ("viewer", "admin"):
            r = gw.call("GET", "/readyz", who)
            assert r.status_code == 503 and unset in r.json()["engines"]["down"]["detail"], who


def test_open_is_refused_beyond_loopback(tmp_path: Path, upstream: Upstream) -> None:
    cfg = frontier_config(upstream.url, tmp_path, auth="open")
    config = write_config(tmp_path, cfg)
    out = subprocess.run([sys.executable, "-m", "turnout", "serve", "--config", str(config), "--host", "0.0.0.0",
                          "--port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "only allowed on a loopback address" in out.stderr
    cli_key(config, "team-a")  # a key in the store does not make `open` acceptable off loopback either
    out = subprocess.run([sys.executable, "-m", "turnout", "serve", "--config", str(config), "--host", "0.0.0.0",
                          "--port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "only allowed on a loopback address" in out.stderr


def test_open_mode_on_loopback_serves_without_keys(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path, frontier_config(upstream.url, tmp_path, auth="open"))
    made = cli_key(config, "team-a")  # keys in the store do not close an explicitly open gateway
    with serve(config) as proc:
        gw = Keyed(proc, config, {"a": made})
        assert gw.call("POST", "/v1/chat/completions", None, CHAT).status_code == 200
        assert gw.call("GET", "/v1/dashboard/stats", None).status_code == 200
        assert gw.call("GET", "/dashboard", None).status_code == 200


def test_admin_api_creates_rotates_expires_and_revokes(tmp_path: Path, upstream: Upstream) -> None:
    config = write_config(tmp_path, frontier_config(upstream.url, tmp_path))
    admin = cli_key(config, "ops", "--roles", "admin")
    with serve(config) as proc:
        gw = Keyed(proc, config, {"admin": admin})
        made = gw.call("POST", "/v1/turnout/keys", "admin", {"tenant": "team-a", "roles": ["user", "viewer"]})
        assert made.status_code == 201 and made.json()["key"].startswith("tk-")
        first, key_id = made.json()["key"], made.json()["key_id"]
        assert gw.call("POST", "/v1/chat/completions", first, CHAT).status_code == 200
        listed = gw.call("GET", "/v1/turnout/keys?tenant=team-a", "admin").json()["data"]
        assert [k["key_id"] for k in listed] == [key_id] and first not in str(listed)  # never the secret
        # rotation: the old secret keeps working for the overlap; then a rotation without overlap ends it
        second = gw.call("POST", f"/v1/turnout/keys/{key_id}/rotate", "admin", {"overlap_s": 600}).json()["key"]
        assert gw.call("POST", "/v1/chat/completions", first, CHAT).status_code == 200
        assert gw.call("POST", "/v1/chat/completions", second, CHAT).status_code == 200
        third = gw.call("POST", f"/v1/turnout/keys/{key_id}/rotate", "admin", {"overlap_s": 0}).json()["key"]
        for old in (first, second):
            r = gw.call("POST", "/v1/chat/completions", old, CHAT)
            assert r.status_code == 401 and r.json()["error"]["code"] == "key_expired"
        assert gw.call("GET", "/v1/dashboard/stats", third).status_code == 200
        # expiry, and bad input
        short = gw.call("POST", "/v1/turnout/keys", "admin", {"tenant": "team-a", "expires": "2s"}).json()["key"]
        assert gw.call("POST", "/v1/chat/completions", short, CHAT).status_code == 200
        _until(lambda: gw.call("POST", "/v1/chat/completions", short, CHAT).status_code == 401, 5)
        for bad in ({"tenant": "a b"}, {"tenant": "t", "roles": ["root"]}, {"tenant": "t", "expires": "soon"},
                    {"tenant": "t", "surprise": 1}, {"tenant": "t", "rpm": -1}):
            r = gw.call("POST", "/v1/turnout/keys", "admin", bad)
            assert r.status_code == 400 and r.json()["error"]["message"], (bad, r.text)
        assert gw.call("DELETE", "/v1/turnout/keys/key_nope", "admin").status_code == 404
        # revocation through the API takes effect on this replica at once
        assert gw.call("DELETE", f"/v1/turnout/keys/{key_id}", "admin").json()["active"] is False
        assert gw.call("POST", "/v1/chat/completions", third, CHAT).status_code == 401
        assert gw.call("POST", f"/v1/turnout/keys/{key_id}/rotate", "admin", {}).status_code == 403
        cfg_view = gw.call("GET", "/v1/turnout/config", "admin").json()
        assert cfg_view["auth"] == "keys" and "frontier" in cfg_view["engines"]
    assert "Traceback" not in proc.output()


def test_dashboard_takes_a_bearer_key_or_a_login_never_a_basic_password(tmp_path: Path, upstream: Upstream) -> None:
    """HTTP Basic credentials are ambient (a browser sends them to every URL of the site from any
    page), so they are no credential: the page's 401 challenges Bearer, and a browser logs in
    (tests/test_security_sessions.py)."""
    config = write_config(tmp_path, frontier_config(upstream.url, tmp_path))
    viewer = cli_key(config, "team-a", "--roles", "viewer")["key"]
    with serve(config) as proc:
        page = httpx.get(proc.url + "/dashboard")
        assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(proc.url + "/dashboard", auth=("me", viewer)).status_code == 401
        assert httpx.get(proc.url + "/v1/dashboard/stats", auth=("", viewer)).status_code == 401
        assert httpx.get(proc.url + "/dashboard", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
        login = httpx.post(proc.url + "/dashboard/login", json={"key": viewer})
        assert login.status_code == 200
        assert httpx.get(proc.url + "/v1/dashboard/stats", cookies=login.cookies).status_code == 200


@pytest.mark.skipif(not redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_two_replicas_on_postgres_and_redis_share_one_key_store(tmp_path: Path, upstream: Upstream,
                                                                pg_schema: str) -> None:
    cfg = frontier_config(upstream.url, tmp_path, storage={
        "sqlite_path": str(tmp_path / "unused.sqlite"), "postgres_dsn": PG_DSN, "postgres_schema": pg_schema,
        "redis_url": "redis://127.0.0.1:6379/0"})
    config = write_config(tmp_path, cfg)
    admin = cli_key(config, "ops", "--roles", "admin")  # `turnout keys --config` writes to PostgreSQL
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        assert conn.execute(f"SELECT tenant, roles FROM {pg_schema}.keys_api_keys").fetchall() == [("ops", '["admin"]')]
    assert not (tmp_path / "unused.sqlite").exists()
    a, b = serve(config), serve(config)
    try:
        A, B = Keyed(a, config, {"admin": admin}), Keyed(b, config, {"admin": admin})
        made = A.call("POST", "/v1/turnout/keys", "admin", {"tenant": "team-a"}).json()
        assert B.call("POST", "/v1/chat/completions", made["key"], CHAT).status_code == 200  # made on A, used on B
        assert A.call("POST", "/v1/chat/completions", made["key"], CHAT).status_code == 200  # A has it cached now
        assert B.call("DELETE", f"/v1/turnout/keys/{made['key_id']}", "admin").status_code == 200
        assert B.call("POST", "/v1/chat/completions", made["key"], CHAT).status_code == 401  # at once on B
        took = _until(lambda: A.call("POST", "/v1/chat/completions", made["key"], CHAT).status_code == 401,
                      KEY_CACHE_S + 2)
        print(f"revoked on B, refused on A after {took:.2f} s (bound {KEY_CACHE_S} s)")
        # and a replica with no keys of its own is not open: nothing authenticates without the shared store
        assert A.call("POST", "/v1/chat/completions", None, CHAT).status_code == 401
    finally:
        a.stop()
        b.stop()
    assert "Traceback" not in a.output() + b.output()


def test_dashboard_in_chromium_with_a_viewer_key_shows_its_tenant(tmp_path: Path, upstream: Upstream) -> None:
    """A viewer logs in through the login form (the page's 401 sends the browser there; the
    session cookie goes with the page's fetch of the stats): the page draws the viewer's
    tenant's figures only."""
    from tests.test_security_sessions import _chromium, _log_in_through_the_form

    config = write_config(tmp_path, frontier_config(upstream.url, tmp_path))
    keys = {"a": cli_key(config, "team-a"), "b": cli_key(config, "team-b"),
            "va": cli_key(config, "team-a", "--roles", "viewer")}
    with serve(config) as proc:
        gw = Keyed(proc, config, keys)
        for who, n in (("a", 2), ("b", 3)):
            for _ in range(n):
                assert gw.call("POST", "/v1/chat/completions", who, CHAT).status_code == 200
        driver, close = _chromium()
        try:
            from selenium.webdriver.common.by import By

            _log_in_through_the_form(driver, gw, "va", "/dashboard?hours=1")
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1"
            assert driver.find_element(By.CSS_SELECTOR, "#totals .kpi .v").text == "2"  # team-a's 2, not all 5
        finally:
            close()


def test_keys_left_in_sqlite_after_scaling_out_never_open_the_gateway(tmp_path: Path, upstream: Upstream,
                                                                       pg_schema: str) -> None:
    cfg = frontier_config(upstream.url, tmp_path)
    del cfg["auth"]
    embedded = write_config(tmp_path, cfg, "embedded.yaml")
    made = cli_key(embedded, "team-a")  # made while keys lived in the SQLite file
    cfg["storage"] = {**cfg["storage"], "postgres_dsn": PG_DSN, "postgres_schema": pg_schema}
    scaled = write_config(tmp_path, cfg, "scaled.yaml")
    with serve(scaled) as proc:  # PostgreSQL holds no key yet: still keys mode, with a warning that says why
        assert "holds 1 active API key(s)" in proc.output() and "auth: keys" in proc.output()
        gw = Keyed(proc, scaled, {"a": made})
        assert gw.call("POST", "/v1/chat/completions", None, CHAT).status_code == 401
        assert gw.call("POST", "/v1/chat/completions", "a", CHAT).status_code == 401  # not in PostgreSQL yet
        assert cli(scaled, "import", str(tmp_path / "turnout.sqlite")).stdout.startswith("copied 1 key(s)")
        # the 401 above may be remembered for KEY_CACHE_S
        _until(lambda: gw.call("POST", "/v1/chat/completions", "a", CHAT).status_code == 200, KEY_CACHE_S + 2)


def test_config_view_masks_passwords_in_every_url() -> None:
    from turnout.server.admin import masked

    shown = masked({"storage": {"postgres_dsn": "postgresql://app:s3cret@db:5432/t", "redis_url": "redis://:pw@r:6379/0"},
                    "engines": {"e": {"base_url": "https://user:tok@llm.example/v1", "model": "m"}}, "n": 3})
    assert "s3cret" not in str(shown) and "pw@" not in str(shown) and "tok@" not in str(shown)
    assert shown["storage"]["postgres_dsn"] == "postgresql://app:***@db:5432/t" and shown["n"] == 3


def test_a_failing_key_store_fails_closed(tmp_path: Path, upstream: Upstream, pg_schema: str) -> None:
    cfg = frontier_config(upstream.url, tmp_path, storage={"postgres_dsn": PG_DSN, "postgres_schema": pg_schema})
    config = write_config(tmp_path, cfg)
    viewer = cli_key(config, "team-a", "--roles", "viewer")
    with serve(config) as proc:
        gw = Keyed(proc, config, {"v": viewer})
        assert gw.call("GET", "/metrics", "v").status_code == 200
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as conn:  # the key table is gone under the gateway
            conn.execute(f"DROP SCHEMA {pg_schema} CASCADE")
        for who in ("tk-" + "y" * 43, None):
            r = gw.call("GET", "/metrics", who)
            assert r.status_code in (401, 503) and r.status_code != 200, r.text
        r = gw.call("GET", "/v1/turnout/usage", "tk-" + "w" * 43)
        assert r.status_code == 503 and r.json()["error"]["code"] == "key_store_unavailable"
        assert gw.call("POST", "/v1/chat/completions", "tk-" + "v" * 43, CHAT).status_code >= 500  # never served
        assert upstream.requests() == []
