"""Usage summaries computed from ledger rows, on hand-made rows."""

from __future__ import annotations

import json

from turnout.ledger.usage import percentile, summarize


def row(**kw: object) -> dict:
    base = {"alias": "auto", "engine": "local", "locality": "local", "status": "ok", "latency_ms": 10.0,
            "prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.5, "baseline_cost_usd": 2.0, "hops": "[]"}
    return {**base, **kw}


def test_summary_counts_hops_savings_and_local_share() -> None:
    hops = json.dumps([{"engine": "frontier", "error": 'upstream said: "engine" overloaded'},
                       {"engine": "claude", "error": "timed out"}])
    s = summarize([row(hops=hops), row()])
    assert s["total"]["fallback_hops"] == 2
    assert s["total"]["saved_usd"] == 3.0 and s["routes"]["auto"]["local_share"] == 1.0


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0
