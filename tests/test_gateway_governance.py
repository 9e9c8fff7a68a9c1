"""API keys, rate limits and budgets enforced by the running gateway, including two
replicas sharing one Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, Upstream, hybrid_config, redis_up
from tests.minute import within_one_minute
from tests.runcli import run_cli
from turnout.testing.procs import start_server

pytestmark = pytest.mark.usefixtures("clean_upstreams")
MSG = {"model": "auto", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 50}


def create_key(db: Path, *args: str) -> dict:
    out = run_cli("keys", "--db", str(db), "create", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def post(url: str, key: str | None, body: dict = MSG) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_keys_tenants_and_rate_limits(gateway_factory, upstream: Upstream, anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = gateway_factory(hybrid_config(upstream.url, anthropic_upstream.url, auth="keys"))
    assert post(gw.url, None).status_code == 401  # auth: keys, and no key exists yet: nobody gets in
    missing = post(gw.url, None)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert post(gw.url, "tk-not-a-real-key").status_code == 401

    def attempt(_: int) -> tuple[str, httpx.Response, list[int], httpx.Response]:
        made = create_key(gw.db, "--tenant", "team-a", "--routes", "auto", "--rpm", "3")
        key = made["key"]  # works at once: a new key is looked up on first use
        denied = post(gw.url, key, {**MSG, "model": "private"})
        codes = [post(gw.url, key).status_code for _ in range(4)]
        return key, denied, codes, post(gw.url, key)

    (key, denied, codes, limited), tries = within_one_minute(attempt)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "route_not_allowed"
    # the 403 above was refused before the limiter, so 3 of these 4 fit the rpm of 3
    assert codes == [200, 200, 200, 429]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    rows = gw.ledger()
    assert {r["tenant"] for r in rows if r["http_status"] == 200} == {"team-a"}
    # a known key's refusals are recorded under its own tenant; callers without a valid key are only
    # counted (turnout_unauthenticated_total) and logged: anyone can send those, stored history must not grow
    assert [r for r in rows if r["tenant"] == "anonymous"] == []
    assert [r["http_status"] for r in rows if r["tenant"] == "team-a" and r["http_status"] == 403] == [403] * tries
    assert key not in gw.db.read_bytes().decode("latin-1")  # only the hash is stored


def test_serve_refuses_to_listen_openly_beyond_loopback(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "turnout", "serve", "--host", "0.0.0.0", "--port", "0",
                          "--db", str(tmp_path / "db.sqlite")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no API keys exist and auth is not set" in out.stderr


@pytest.mark.skipif(not redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_two_replicas_share_limits_and_budget_on_redis(tmp_path: Path, upstream: Upstream,
                                                      anthropic_upstream: Upstream) -> None:
    cfg = hybrid_config(upstream.url, anthropic_upstream.url,
                        storage={"sqlite_path": str(tmp_path / "shared.sqlite"), "redis_url": "redis://127.0.0.1:6379/0"})
    cfg_path = tmp_path / "turnout.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg))
    db = tmp_path / "shared.sqlite"
    # each request reserves its estimate at the frontier's prices: 50 max tokens -> about $0.0005
    budget_key = create_key(db, "--tenant", f"usd-{uuid.uuid4().hex[:6]}", "--usd-day", "0.006")
    procs = [start_server("turnout", "serve", "--config", str(cfg_path), timeout=60) for _ in range(2)]
    try:
        urls = [p.url for p in procs]

        def fire(key: str, n: int) -> list[int]:
            with ThreadPoolExecutor(16) as pool:
                return list(pool.map(lambda i: post(urls[i % 2], key).status_code, range(n)))

        plain = lambda made: made["key"]

        def rpm_burst(_: int) -> list[int]:  # 40 concurrent requests over both replicas, a fresh key each try
            return fire(create_key(db, "--tenant", f"rpm-{uuid.uuid4().hex[:6]}", "--rpm", "17")["key"], 40)

        codes, _ = within_one_minute(rpm_burst)
        assert codes.count(200) == 17 and codes.count(429) == 23

        codes = fire(plain(budget_key), 40)
        assert set(codes) <= {200, 429}
        for _ in range(100):  # drain the rest of the budget, one request at a time
            last = post(urls[_ % 2], plain(budget_key))
            if last.status_code == 429:
                break
        assert last.status_code == 429 and last.json()["error"]["code"] == "budget_exceeded"
        import sqlite3

        with sqlite3.connect(db) as conn:
            spent, admitted = conn.execute(
                "SELECT SUM(cost_usd), COUNT(*) FROM requests WHERE tenant = ? AND http_status = 200",
                (budget_key["tenant"],)).fetchone()
        # Hand-computed reservation for this request: prompt estimate len("one two three")//4 + 4 = 7 tokens
        # plus max_tokens 50, priced at the chain's dearest engine (frontier: $2.5 and $10 per 1M).
        estimate = 7 * 2.5e-6 + 50 * 10e-6
        assert spent <= 0.006 + 1e-9  # never overspent, across two replicas under concurrent load
        # and refused only once the next reservation could not fit (the limiter counts whole
        # micro-dollars, rounding each settled cost up by less than one micro-dollar)
        assert spent + estimate + admitted * 1e-6 > 0.006
    finally:
        for p in procs:
            p.stop()


def test_budget_survives_a_restart(tmp_path: Path, upstream: Upstream, anthropic_upstream: Upstream) -> None:
    """The embedded limiter keeps counters in memory and starts each day/month window from
    the ledger, so restarting the gateway does not hand a spent budget back."""
    import yaml

    db = tmp_path / "db.sqlite"
    cfg = hybrid_config(upstream.url, anthropic_upstream.url, storage={"sqlite_path": str(db)})
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    key = create_key(db, "--tenant", "restart", "--usd-day", "0.002")["key"]
    gw = start_server("turnout", "serve", "--config", str(tmp_path / "t.yaml"), timeout=60)
    try:
        codes = [post(gw.url, key).status_code for _ in range(40)]
        assert 200 in codes and codes[-1] == 429
    finally:
        gw.stop()
    gw = start_server("turnout", "serve", "--config", str(tmp_path / "t.yaml"), timeout=60)
    try:
        again = post(gw.url, key)
        assert again.status_code == 429 and again.json()["error"]["code"] == "budget_exceeded"
    finally:
        gw.stop()
