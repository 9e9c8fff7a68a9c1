"""A spill is counted apart from escalations (docs/fleet.md "Records", docs/observability.md).

One gateway over two OpenAI-wire stand-ins (real processes on loopback): a pool ``tight`` of one
endpoint that holds one request at a time, spilling to ``frontier`` on the route ``burst``; and a
cascade route whose every draft is escalated (threshold 0: a mean log-probability is never above it).
With the pool held busy, a second ``burst`` request spills. The dashboard's JSON then shows the spill
as a spill (1 of the route's 2 requests) and not as an escalation (the route's escalation rate 0),
while the cascade's escalation still counts as one; ``turnout usage``'s reading of the same rows agrees.
"""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Gateway, Upstream, until
from turnout.ledger.usage import escalated
from turnout.testing.procs import start_server

FAST = {"timeout": 20, "first_token_timeout": 20, "retries": 0, "breaker_failures": 1000}


def chat(gw: Gateway, model: str, text: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60)


def in_flight(gw: Gateway, engine: str) -> int:
    data = httpx.get(gw.url + "/v1/turnout/pools", timeout=10).json()["data"]
    return sum(e["in_flight"] for p in data if p["engine"] == engine for e in p["endpoints"])


def test_a_spill_is_not_an_escalation_on_the_dashboard(gateway_factory: Any, tmp_path: Path) -> None:
    with start_server("turnout.testing.upstream", "--model", "fake-local") as lp, \
            start_server("turnout.testing.upstream", "--model", "fake-frontier") as fp:
        local, frontier = Upstream(lp), Upstream(fp)
        gw: Gateway = gateway_factory({
            "auth": "open",
            "engines": {
                "tight": {"dialect": "openai", "locality": "local", "model": "fake-local", "balance": "round_robin",
                          "endpoints": [{"url": local.url + "/v1", "max_concurrency": 1}],
                          "pool": {"probe_interval_s": 0.3, "cooldown_s": 0.5, "probe_timeout_s": 2},
                          "resilience": dict(FAST)},
                "weak": {"dialect": "openai", "locality": "local", "model": "fake-local",
                         "base_url": local.url + "/v1", "resilience": dict(FAST)},
                "frontier": {"dialect": "openai", "locality": "remote", "model": "fake-frontier",
                             "base_url": frontier.url + "/v1", "resilience": dict(FAST)},
            },
            "routes": {
                "burst": {"chain": ["tight", "frontier"], "spill": True},
                "cascading": {"chain": ["weak", "frontier"], "strategy": "cascade", "threshold": 0.0},
            },
            "guards": {"enabled": False},
        })
        local.queue({"name": "ok", "delay_ms": 4000})  # the pool's one endpoint holds the first request
        with cf.ThreadPoolExecutor(1) as ex:
            held = ex.submit(chat, gw, "burst", "hold the pool")
            until(lambda: in_flight(gw, "tight") == 1, "the pool's endpoint busy")
            spilled = chat(gw, "burst", "spill me")
            assert spilled.status_code == 200, spilled.text
            assert spilled.headers["x-turnout-engine"] == "frontier"
            assert spilled.headers["x-turnout-fallbacks"] == "tight:spill"
            kept = held.result()
        assert kept.status_code == 200 and kept.headers["x-turnout-engine"] == "tight", kept.text
        cascaded = chat(gw, "cascading", "a hard question")
        assert cascaded.status_code == 200, cascaded.text
        assert cascaded.headers["x-turnout-engine"] == "frontier"
        assert "x-turnout-fallbacks" not in cascaded.headers  # escalated by the cascade, not by a failed hop
        until(lambda: len(gw.ledger()) == 3, "the three rows written")
        rows = gw.ledger()

        api = httpx.get(gw.url + "/v1/dashboard/stats", params={"hours": 1}, timeout=10)
        assert api.status_code == 200, api.text
        data = api.json()
        t = data["totals"]
        assert t["requests"] == 3
        assert (t["spilled"], t["escalated"]) == (1, 1)  # the spill apart; the cascade's escalation alone
        assert t["spill_rate"] == 1 / 3 and t["escalation_rate"] == 1 / 3
        assert sum(data["series"]["spilled"]) == 1 and sum(data["series"]["escalated"]) == 1
        assert data["spills"] == {"burst": {"requests": 2, "spilled": 1, "spill_rate": 0.5}}
        drift = data["drift"]["routes"]
        assert drift["burst"]["totals"]["escalation_rate"] == 0.0  # load is not an escalation
        assert drift["cascading"]["totals"]["escalation_rate"] == 1.0
        assert "spill" in data["definitions"]["escalated"]

        # `turnout usage` reads the same rows the same way
        by_id = {r["request_id"]: r for r in rows}
        assert "spill" in by_id[spilled.headers["x-request-id"]]["labels"].split(",")
        assert [escalated(by_id[r.headers["x-request-id"]]) for r in (spilled, kept, cascaded)] == [False, False, True]
        # a refusal: the window must be a positive number of hours
        bad = httpx.get(gw.url + "/v1/dashboard/stats", params={"hours": "0"}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "hours"
