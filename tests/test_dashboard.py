"""The dashboard: its stats API on a real SQLite ledger (values, buckets, and index use:
no full scan of ``requests`` when a window is given), and the page itself in headless
Chromium after a mixed load through a real gateway process (charts drawn, screenshot
saved to test-artifacts/dashboard.png)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, Upstream, hybrid_config
from tests.test_metrics_ledger import mixed_load
from turnout.ledger import stats
from turnout.ledger.base import LedgerRow
from turnout.ledger.labels import Label, SQLiteLabels
from turnout.ledger.sqlite import SQLiteLedger

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _insert(db: Path, rows: list[LedgerRow], feedback: list[tuple[str, float]]) -> None:
    conn = sqlite3.connect(db)
    with conn:
        cols = ["ts", "request_id", "tenant", "alias", "status", "http_status", "engine", "locality", "hops",
                "strategy", "latency_ms", "cost_usd", "baseline_cost_usd"]
        conn.executemany(f"INSERT INTO requests ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         [tuple(getattr(r, c) for c in cols) for r in rows])
        conn.executemany("INSERT INTO feedback (ts, request_id, kind, value, satisfaction) "
                         "VALUES (0, ?, 'rating', 1, ?)", feedback)
    conn.close()


async def _make_ledger(db: Path) -> None:
    await SQLiteLedger(db).close()  # creates the tables (all migrations)


def test_a_hedges_cancelled_loser_is_not_an_escalation(tmp_path: Path) -> None:
    """The dashboard's SQL and `turnout usage` agree: a hop with code hedge_lost (the slower engine of
    a hedge, cancelled) does not make a request escalated; any other failed hop does, with or without
    a code (older rows), also beside a hedge's loser."""
    import asyncio
    import json

    from turnout.ledger.usage import escalated

    db = tmp_path / "ledger.sqlite"
    asyncio.run(_make_ledger(db))
    now = 1_700_000_000.0
    lost = {"engine": "local", "error": 'hedge lost to frontier; cancelled "engine"', "code": "hedge_lost"}
    failed = {"engine": "local", "error": "upstream said {\"code\": \"hedge_lost\"}", "code": "upstream_error"}
    hops = {"h1": [lost], "h2": [lost, failed], "h3": [failed], "h4": [{"engine": "x", "error": "500"}], "h5": []}
    rows = [LedgerRow(ts=now - 30 + i, request_id=rid, tenant="t", alias="auto", status="ok", http_status=200,
                      engine="frontier", locality="remote", latency_ms=1.0,
                      hops=json.dumps(h, separators=(",", ":")) if rid != "h4" else json.dumps(h))
            for i, (rid, h) in enumerate(hops.items())]
    _insert(db, rows, [])
    t = stats.compute(stats.sqlite_query(db), "sqlite", hours=1, now=now)["totals"]
    assert t["requests"] == 5 and t["escalated"] == 3
    assert [escalated({"engine": "frontier", "hops": r.hops}) for r in rows] == [False, True, True, True, False]


def test_stats_values_buckets_and_index_use(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "ledger.sqlite"
    asyncio.run(_make_ledger(db))
    now = 1_700_000_000.0
    old = [LedgerRow(ts=now - 10 * 86400 + i, request_id=f"old{i}", tenant="t", alias="auto", status="ok",
                     http_status=200, engine="frontier", locality="remote", latency_ms=1.0) for i in range(500)]
    recent = [
        # bucket A (now-1800): two local, one remote with a failed hop first (escalated), one error
        LedgerRow(ts=now - 1800, request_id="a1", tenant="t", alias="private", status="ok", http_status=200,
                  engine="local", locality="local", latency_ms=10.0, cost_usd=0.001, baseline_cost_usd=0.01),
        LedgerRow(ts=now - 1799, request_id="a2", tenant="t", alias="private", status="ok", http_status=200,
                  engine="local", locality="local", latency_ms=30.0, cost_usd=0.001, baseline_cost_usd=0.01),
        LedgerRow(ts=now - 1798, request_id="a3", tenant="t", alias="auto", status="ok", http_status=200,
                  engine="local", locality="local", latency_ms=20.0, hops='[{"engine": "frontier", "error": "500"}]'),
        LedgerRow(ts=now - 1797, request_id="a4", tenant="t", alias="auto", status="error", http_status=502,
                  latency_ms=5.0),
        # bucket B (now-60): a cascade answered remotely (escalated) and one remote
        LedgerRow(ts=now - 60, request_id="b1", tenant="t", alias="auto", status="ok", http_status=200,
                  engine="frontier", locality="remote", strategy="cascade", latency_ms=100.0, cost_usd=0.02,
                  baseline_cost_usd=0.02),
        LedgerRow(ts=now - 59, request_id="b2", tenant="t", alias="auto", status="ok", http_status=200,
                  engine="frontier", locality="remote", strategy="rules", latency_ms=200.0, cost_usd=0.03,
                  baseline_cost_usd=0.03),
    ]
    _insert(db, old + recent, [("a1", 1.0), ("a2", 0.5), ("b1", 0.0), ("old3", 1.0)])
    labels = SQLiteLabels(db)  # the learning loop's labels: two shadow calls, a feedback, an escalation
    for ts, source, weak, strong in ((now - 10 * 86400, "shadow", 0.0, 1.0), (now - 1795, "shadow", 1.0, 1.0),
                                     (now - 1794, "shadow", 0.0, 1.0), (now - 1793, "feedback", 0.75, None),
                                     (now - 58, "cascade", 0.0, None)):
        labels.add_sync(Label("t", "auto", f"p{ts}", "local", "frontier", source, "j", weak, strong, ts=ts))
    labels._conn.close()

    plans: list[tuple[str, str]] = []
    run = stats.sqlite_query(db)

    def query(sql: str, params: Any) -> list[tuple[Any, ...]]:
        plans.append((sql, " | ".join(str(r[-1]) for r in run("EXPLAIN QUERY PLAN " + sql, params))))
        return run(sql, params)

    data = stats.compute(query, "sqlite", hours=1, now=now)
    # no full scan of requests (or feedback, or labels) for a windowed query: each is found through its ts index
    ledger_plans = [plan for sql, plan in plans if "requests" in sql]
    assert len(ledger_plans) == 4  # traffic, latency, feedback, the injection guard's flag rate
    for plan in ledger_plans:
        assert "requests_ts" in plan, plan
        assert "SCAN r " not in plan + " " and "SCAN requests" not in plan and "SCAN f" not in plan, plan
    label_plans = [plan for sql, plan in plans if "FROM route_labels" in sql]
    assert len(label_plans) == 1 and "route_labels_ts" in label_plans[0], label_plans
    assert data["bucket_seconds"] == 60 and len(data["buckets"]) == 61  # clock-aligned: a partial bucket at each end
    t = data["totals"]
    assert t["requests"] == 6 and t["errors"] == 1
    assert t["local_share"] == pytest.approx(3 / 5)
    assert t["escalated"] == 2 and t["escalation_rate"] == pytest.approx(2 / 5)
    assert t["cost_usd"] == pytest.approx(0.052) and t["saved_usd"] == pytest.approx(0.07 - 0.052)
    assert t["feedback"] == 3 and t["satisfaction"] == pytest.approx(0.5)  # old3 is outside the window
    s, buckets = data["series"], data["buckets"]
    ia = next(i for i, b in enumerate(buckets) if b <= now - 1800 < b + 60)
    ib = next(i for i, b in enumerate(buckets) if b <= now - 60 < b + 60)
    assert s["requests"][ia] == 4 and s["requests"][ib] == 2 and sum(s["requests"]) == 6
    assert s["p50_ms"][ia] == 20.0 and s["p95_ms"][ia] == 30.0  # nearest rank over ok requests 10, 20, 30
    assert s["p50_ms"][ib] == 100.0 and s["p95_ms"][ib] == 200.0
    assert s["local_share"][ia] == 1.0 and s["local_share"][ib] == 0.0
    assert s["escalation_rate"][ia] == pytest.approx(1 / 3) and s["escalation_rate"][ib] == pytest.approx(1 / 2)
    assert s["satisfaction"][ia] == pytest.approx(0.75) and s["satisfaction"][ib] == 0.0
    assert data["satisfaction_by_route"] == {"auto": {"mean": 0.0, "count": 1}, "private": {"mean": 0.75, "count": 2}}
    traffic = {(g["route"], g["engine"]): sum(g["counts"]) for g in data["traffic"]}
    assert traffic == {("auto", "(none)"): 1, ("auto", "frontier"): 2, ("auto", "local"): 1, ("private", "local"): 2}
    drift = data["drift"]["routes"]
    auto, private = drift["auto"], drift["private"]
    assert auto["escalation_rate"][ia] == 1.0 and auto["escalation_rate"][ib] == 0.5  # a3 escalated; b1 of b1, b2
    assert private["escalation_rate"][ia] == 0.0 and private["judged_local_quality"][ia] is None
    assert auto["judged_local_quality"][ia] == pytest.approx(1.75 / 3) and auto["judged_local_quality"][ib] == 0.0
    assert auto["shadow_agreement"][ia] == 0.5 and auto["shadow_agreement"][ib] is None
    assert auto["labels"][ia] == 3 and sum(auto["labels"]) == 4  # the old label is outside the window
    assert auto["totals"] == {"escalation_rate": pytest.approx(2 / 3), "judged_local_quality": pytest.approx(1.75 / 4),
                              "shadow_agreement": 0.5, "labels": 4, "shadow_labels": 2}
    assert "judged_local_quality" in data["definitions"]

    everything = stats.compute(run, "sqlite", hours=None, now=now)
    assert everything["totals"]["requests"] == 506 and everything["totals"]["feedback"] == 4
    assert everything["bucket_seconds"] == 86_400 * 7 or everything["bucket_seconds"] * 60 >= 10 * 86400


def _chromium_options(profile: str) -> Any:
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1400,1250", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    return opts


@pytest.mark.usefixtures("clean_upstreams")
def test_dashboard_draws_charts_in_headless_chromium(gateway_factory, upstream: Upstream,
                                                     anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.skip("chromium is not installed "
                    "(apt-get install chromium chromium-driver; scripts/install.sh does it as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    gw: Gateway = gateway_factory(hybrid_config(upstream.url, anthropic_upstream.url))
    mixed_load(gw, upstream)
    rows = gw.ledger()
    for i, r in enumerate(rows[:6]):
        if r["status"] == "ok":
            assert httpx.post(gw.url + "/v1/feedback",
                              json={"request_id": r["request_id"], "score": 1 + i % 5}).status_code == 200
    api = httpx.get(gw.url + "/v1/dashboard/stats", params={"hours": 1}).json()
    assert api["totals"]["requests"] == len(rows) and api["totals"]["feedback"] >= 3
    assert httpx.get(gw.url + "/v1/dashboard/stats", params={"hours": "soon"}).status_code == 400
    assert httpx.get(gw.url + "/v1/dashboard/stats", params={"hours": "-1"}).json()["error"]["param"] == "hours"

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    profile = tempfile.mkdtemp(prefix="turnout-chromium-")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=_chromium_options(profile))
    try:
        driver.set_page_load_timeout(30)
        driver.get(gw.url + "/dashboard?hours=1")
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1", \
            driver.find_element(By.ID, "status").text

        def count(css: str) -> int:
            return len(driver.find_elements(By.CSS_SELECTOR, css))

        served = {(r["alias"], r["engine"] or "(none)") for r in rows}
        bars = driver.find_elements(By.CSS_SELECTOR, "#traffic rect.bar")
        assert {b.get_attribute("data-series") for b in bars} == {f"{a} → {e}" for a, e in served}
        assert count("#share circle.pt[data-series='local share']") >= 1
        assert count("#share circle.pt[data-series='escalation rate']") >= 1
        assert count("#cost circle.pt[data-series='cost']") >= 1 and count("#cost circle.pt[data-series='saved']") >= 1
        assert (count("#latency circle.pt[data-series='p50']") >= 1
                and count("#latency circle.pt[data-series='p95']") >= 1)
        assert count("#satisfaction circle.pt") >= 1
        assert count("#byroute tr.route-row") >= 1
        assert driver.find_element(By.CSS_SELECTOR, "#totals .kpi .v").text == str(len(rows))
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        # nothing on the page asked for anything but the gateway itself
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(gw.url) for u in urls), urls
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_drift_panels_show_the_viewers_tenant_in_headless_chromium(tmp_path: Path) -> None:
    """A learned route's traffic of two tenants, shadowed and judged: the drift panels (escalation
    rate, judged local quality, shadow agreement per route) drawn for a viewer show its tenant only."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed "
                    "(apt-get install chromium chromium-driver; scripts/install.sh does it as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.keyed import cli_key, keyed_gateway, write_config
    from tests.test_learning_gateway import config, labels_of
    from tests.test_learning_loop import router_on, synthetic
    from turnout.testing.procs import control, start_server

    with start_server("turnout.testing.upstream") as weak, start_server("turnout.testing.upstream") as strong:
        control(weak.url, "scenarios", {"replies": {"fake-small": ["#### 4", "#### 5", "#### 5", "#### 5"]}})
        control(strong.url, "scenarios", {"replies": {"fake-big": ["#### 4"] * 4}})
        cfg = config(weak.url, strong.url, router_on(synthetic(300, seed=8)).save(tmp_path / "r.npz"), guards=False)
        cfg.update(auth="keys", storage={"sqlite_path": str(tmp_path / "turnout.sqlite")})
        path = write_config(tmp_path, cfg)
        keys = {"a": cli_key(path, "team-a"), "b": cli_key(path, "team-b"),
                "va": cli_key(path, "team-a", "--roles", "viewer"), "admin": cli_key(path, "ops", "--roles", "admin")}
        with keyed_gateway(path, keys) as gw:
            for who in ("a", "a", "b", "b"):  # a: 4 == 4, 5 != 4; b: 5 != 4 twice
                r = gw.call("POST", "/v1/chat/completions", who,
                            {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]})
                assert r.status_code == 200 and r.headers["x-turnout-engine"] == "small", r.text
            assert len(labels_of(tmp_path / "turnout.sqlite", 4)) == 4

            def drift(who: str, query: str = "") -> dict[str, Any]:
                r = gw.call("GET", "/v1/dashboard/stats?hours=1" + query, who)
                assert r.status_code == 200, r.text
                return r.json()["drift"]["routes"]["auto"]["totals"]  # type: ignore[no-any-return]

            assert drift("va") == {"escalation_rate": 0.0, "judged_local_quality": 0.5, "shadow_agreement": 0.5,
                                   "labels": 2, "shadow_labels": 2}
            assert drift("va", "&tenant=team-b") == drift("va")  # a viewer cannot ask for another tenant
            assert drift("admin")["shadow_agreement"] == 0.25 and drift("admin")["labels"] == 4
            assert drift("admin", "&tenant=team-b")["shadow_agreement"] == 0.0
            assert gw.call("GET", "/v1/dashboard/stats", "a").status_code == 403

            os.environ.setdefault("SE_OFFLINE", "true")
            profile = tempfile.mkdtemp(prefix="turnout-chromium-")
            driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=_chromium_options(profile))
            try:
                driver.execute_cdp_cmd("Network.enable", {})
                driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                                       {"headers": {"Authorization": f"Bearer {gw.token('va')}"}})
                driver.set_page_load_timeout(30)
                driver.get(gw.url + "/dashboard?hours=1")
                WebDriverWait(driver, 20).until(
                    lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
                assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1", \
                    driver.find_element(By.ID, "status").text

                def count(css: str) -> int:
                    return len(driver.find_elements(By.CSS_SELECTOR, css))

                for panel in ("drift-escalation", "drift-quality", "drift-agreement"):
                    assert count(f"#{panel} circle.pt[data-series='auto']") >= 1, panel
                cells = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#drift-table tr.drift-row td")]
                assert cells == ["auto", "0%", "0.50", "50%", "2 (2)"]  # team-a's figures, not everyone's (25 %)
                assert driver.find_element(By.CSS_SELECTOR, "#totals .kpi .v").text == "2"  # team-a's requests
                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / "dashboard-drift.png"
                driver.execute_script("document.getElementById('drift-escalation').scrollIntoView()")
                assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            finally:
                driver.quit()
                shutil.rmtree(profile, ignore_errors=True)
