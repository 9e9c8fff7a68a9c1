"""After a mixed load through a real gateway process (remote and local, streaming and not,
fallbacks, upstream errors, a broken stream, refusals), the Prometheus counters at
/metrics agree exactly with sums over the ledger rows, per route and engine."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway, Upstream, hybrid_config

pytestmark = pytest.mark.usefixtures("clean_upstreams")

USER = [{"role": "user", "content": "Say something short."}]


def mixed_load(gw: Gateway, upstream: Upstream) -> dict[str, int]:
    """Drive every kind of outcome once or more; returns how many requests were sent by kind.
    Waits until the ledger holds a row for each request (stream rows commit as streams end)."""
    client = gw.openai()
    sent: dict[str, int] = defaultdict(int)

    def count(kind: str) -> None:
        sent[kind] += 1
        sent["total"] += 1

    for _ in range(3):  # remote, non-streaming
        client.chat.completions.create(model="auto", messages=USER, max_tokens=8)
        count("remote")
    for _ in range(2):  # remote, streaming with usage
        list(client.chat.completions.create(model="auto", messages=USER, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))
        count("remote_stream")
    for _ in range(2):  # local, non-streaming
        client.chat.completions.create(model="private", messages=USER, max_tokens=4, temperature=0)
        count("local")
    list(client.chat.completions.create(model="private", messages=USER, max_tokens=4, stream=True))
    count("local_stream")
    client.chat.completions.create(model="auto", messages=USER, max_tokens=8, metadata={"task": "code"})  # -> claude
    count("anthropic")
    list(client.chat.completions.create(model="anthropic", messages=USER, max_tokens=8, stream=True))
    count("anthropic_stream")
    upstream.queue("500", "500")  # the frontier fails twice (attempt + retry): falls back to local
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=USER, max_tokens=4)
    assert raw.headers["x-turnout-engine"] == "local" and "frontier" in raw.headers["x-turnout-fallbacks"]
    count("fallback")
    upstream.queue("500", "500")  # no fallback on this route: 502
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="remote-only", messages=USER, max_tokens=4)
    assert info.value.status_code == 502
    count("upstream_error")
    upstream.queue({"name": "error_midstream", "after_chunks": 2})  # stream breaks after its role chunk and first token
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="remote-only", messages=USER, max_tokens=16, stream=True))
    count("midstream")
    with pytest.raises(openai.NotFoundError):  # unknown model: refused before any engine
        client.chat.completions.create(model="no-such-model", messages=USER)
    count("unknown_model")
    resp = httpx.post(gw.url + "/v1/chat/completions", json={"model": "auto", "messages": []})  # schema violation
    assert resp.status_code == 400
    count("bad_request")
    raw = client.chat.completions.with_raw_response.create(  # sensitive, asked of a remote engine: confined to local
        model="frontier", messages=USER, max_tokens=4, extra_headers={"x-turnout-sensitivity": "sensitive"})
    assert raw.headers["x-turnout-engine"] == "local"
    count("sensitive")
    stream = client.chat.completions.create(model="private", messages=USER, max_tokens=200, stream=True)
    next(iter(stream))  # the client goes away after the first chunk: the local model stops, status client_closed
    stream.close()
    count("client_closed")

    deadline = time.monotonic() + 15
    while len(gw.ledger()) < sent["total"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(gw.ledger()) == sent["total"]
    return dict(sent)


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus samples by name, keyed by their sorted labels."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def _by(samples: dict[tuple[tuple[str, str], ...], float], keep: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    agg: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, v in samples.items():
        d = dict(labels)
        agg[tuple(d[k] for k in keep)] += v
    return {k: v for k, v in agg.items() if v}


def ledger_label(row: dict[str, Any], routes: set[str]) -> tuple[str, str]:
    """The (route, engine) labels the metrics use for a ledger row (see turnout.metrics.Metrics)."""
    route = row["alias"] if row["alias"] in routes else "unknown"
    return route, row["engine"] or "none"


def test_metrics_agree_with_the_ledger(gateway_factory, upstream: Upstream, anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    cfg = hybrid_config(upstream.url, anthropic_upstream.url)
    gw: Gateway = gateway_factory(cfg)
    sent = mixed_load(gw, upstream)
    rows = gw.ledger()
    m = scrape(gw.url)
    names = set(cfg["routes"]) | set(cfg["engines"])

    # the load produced every kind of outcome the ledger knows
    statuses = {r["status"] for r in rows}
    assert {"ok", "error", "error_midstream", "client_closed"} <= statuses
    assert {r["locality"] for r in rows} >= {"local", "remote"} and any(r["stream"] for r in rows)
    assert any(r["hops"] != "[]" and r["status"] == "ok" for r in rows)

    # requests: count per (route, engine, status)
    want_req: dict[tuple[str, ...], float] = defaultdict(float)
    for r in rows:
        want_req[(*ledger_label(r, names), r["status"])] += 1
    got_req = _by(m["turnout_requests_total"], ("route", "engine", "status"))
    assert got_req == dict(want_req)
    assert sum(got_req.values()) == sent["total"] == len(rows)

    # tokens per (route, engine, direction)
    want_tok: dict[tuple[str, ...], float] = defaultdict(float)
    for r in rows:
        route, engine = ledger_label(r, names)
        want_tok[(route, engine, "in")] += r["prompt_tokens"]
        want_tok[(route, engine, "out")] += r["completion_tokens"]
    got_tok = _by(m["turnout_tokens_total"], ("route", "engine", "direction"))
    assert got_tok == {k: v for k, v in want_tok.items() if v}
    assert sum(got_tok.values()) > 0

    # cost per (route, engine): summed in commit order, as the counter was incremented
    want_cost: dict[tuple[str, ...], float] = defaultdict(float)
    for r in rows:
        if r["cost_usd"]:
            want_cost[ledger_label(r, names)] += r["cost_usd"]
    got_cost = _by(m["turnout_cost_usd_total"], ("route", "engine"))
    assert got_cost == dict(want_cost)  # exactly: same float additions in the same order
    assert sum(got_cost.values()) > 0
