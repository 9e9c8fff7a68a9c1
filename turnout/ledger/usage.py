"""Usage summaries from the ledger: per route and per engine, with the satisfaction of the
requests that got feedback (mean normalised score 0..1, see turnout.ledger.feedback)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def _group(rows: list[dict[str, Any]], satisfaction: dict[str, float] | None = None) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    scores = [satisfaction[r["request_id"]] for r in rows if satisfaction and r["request_id"] in satisfaction]
    lat = [r["latency_ms"] for r in ok if r["latency_ms"] is not None]
    cost = sum(r["cost_usd"] for r in rows)
    baseline = sum(r["baseline_cost_usd"] for r in rows)
    local = sum(1 for r in ok if r["locality"] == "local")
    return {
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "cost_usd": cost,
        "baseline_cost_usd": baseline,
        "saved_usd": baseline - cost,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "local_share": local / len(ok) if ok else None,
        "fallback_hops": sum(len(json.loads(r["hops"] or "[]")) for r in rows),
        "satisfaction": sum(scores) / len(scores) if scores else None,
        "feedback": len(scores),
    }


def summarize(rows: list[dict[str, Any]], feedback: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``feedback``: rows with ``request_id`` and ``satisfaction`` (``read_feedback``); each
    counts towards the route and engine of its request."""
    sat = {f["request_id"]: float(f["satisfaction"]) for f in feedback or []}
    by_route: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_engine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_route[r["alias"]].append(r)
        by_engine[r["engine"] or "(none)"].append(r)
    return {
        "total": _group(rows, sat),
        "routes": {k: _group(v, sat) for k, v in sorted(by_route.items())},
        "engines": {k: _group(v, sat) for k, v in sorted(by_engine.items())},
    }


def render(summary: dict[str, Any]) -> str:
    head = f"{'':<22}{'requests':>9}{'errors':>7}{'tokens in':>11}{'tokens out':>11}{'cost $':>11}{'saved $':>11}{'p50 ms':>9}{'p95 ms':>9}{'local':>7}{'satisfaction':>17}"
    lines = []

    def row(name: str, g: dict[str, Any]) -> str:

        def fmt(v: float | None, spec: str) -> str:
            return format(v, spec) if v is not None else format("-", ">9")

        share = f"{g['local_share']:.0%}" if g["local_share"] is not None else "-"
        sat = f"{g['satisfaction']:.2f} ({g['feedback']})" if g.get("satisfaction") is not None else "-"
        return (f"{name[:21]:<22}{g['requests']:>9}{g['errors']:>7}{g['prompt_tokens']:>11}{g['completion_tokens']:>11}"
                f"{g['cost_usd']:>11.6f}{g['saved_usd']:>11.6f}{fmt(g['p50_ms'], '>9.1f')}{fmt(g['p95_ms'], '>9.1f')}{share:>7}{sat:>17}")

    for title, key in (("by route", "routes"), ("by engine", "engines")):
        lines += [title, head] + [row(k, g) for k, g in summary[key].items()] + [""]
    lines += [row("total", summary["total"])]
    lines.append("saved = cost of sending the same tokens to the most expensive remote engine, minus actual cost")
    lines.append("satisfaction = mean feedback score, 0..1 (thumbs up 1, down 0; rating n of 5 -> (n-1)/4), (count)")
    return "\n".join(lines)
