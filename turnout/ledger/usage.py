"""Usage summaries from the ledger: per route and per engine, with the satisfaction of the
requests that got feedback (mean normalised score 0..1, see turnout.ledger.feedback), the
escalation rate (as the dashboard defines it, turnout.ledger.stats) and, per route, what the
learning loop saw: labels by source, the share of requests spent on shadow labels, judged local
quality and shadow agreement (turnout.ledger.labels)."""

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


HEDGE_LOST = "hedge_lost"  # the hop a hedge's slower engine leaves (turnout.engines.fallback): not an escalation
NOT_FAILED = (HEDGE_LOST, "spill")  # nor is a saturated pool's spill (turnout.engines.pool): load, counted apart


def escalated(r: dict[str, Any]) -> bool:
    """Answered by an engine other than the first it would have tried (turnout.ledger.stats)."""
    if r.get("engine") is None:
        return False
    if any(h.get("code") not in NOT_FAILED for h in json.loads(r.get("hops") or "[]")):  # nor a hedge's loser, a spill
        return True
    if r.get("strategy") == "cascade":
        return r.get("locality") == "remote"
    if r.get("strategy") == "learned":
        return r.get("score") is not None and r.get("threshold") is not None and r["score"] >= r["threshold"]
    return False


def label_summary(labels: list[dict[str, Any]], requests: int) -> dict[str, Any]:
    """Per route: label counts by source; judged local quality = mean weak-answer score of the
    labels that judged it; shadow agreement = share of shadow labels where the weak answer was as
    good as the strong one; labelling share = shadow labels / the route's requests."""
    by_source: dict[str, int] = defaultdict(int)
    for lb in labels:
        by_source[lb["source"]] += 1
    judged = [lb["weak_score"] for lb in labels if lb["weak_score"] is not None]
    shadow = [lb for lb in labels if lb["source"] == "shadow" and lb["weak_score"] is not None]
    agree = [lb["weak_score"] >= (lb["strong_score"] if lb["strong_score"] is not None else 1.0) for lb in shadow]
    return {
        "labels": len(labels),
        "by_source": dict(sorted(by_source.items())),
        "judged_local_quality": sum(judged) / len(judged) if judged else None,
        "shadow_agreement": sum(agree) / len(agree) if agree else None,
        "labelling_share": len(shadow) / requests if requests else None,
        "label_cost_usd": sum(float(lb.get("cost_usd") or 0.0) for lb in labels),
    }


def _group(rows: list[dict[str, Any]], satisfaction: dict[str, float] | None = None) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    answered = [r for r in rows if r.get("engine") is not None]
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
        "escalation_rate": sum(escalated(r) for r in answered) / len(answered) if answered else None,
        "satisfaction": sum(scores) / len(scores) if scores else None,
        "feedback": len(scores),
    }


def summarize(rows: list[dict[str, Any]], feedback: list[dict[str, Any]] | None = None,
              labels: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``feedback``: rows with ``request_id`` and ``satisfaction`` (``read_feedback``); each
    counts towards the route and engine of its request. ``labels``: route_labels rows."""
    sat = {f["request_id"]: float(f["satisfaction"]) for f in feedback or []}
    by_route: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_engine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_route[r["alias"]].append(r)
        by_engine[r["engine"] or "(none)"].append(r)
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lb in labels or []:
        by_label[lb["alias"]].append(lb)
    out = {
        "total": _group(rows, sat),
        "routes": {k: _group(v, sat) for k, v in sorted(by_route.items())},
        "engines": {k: _group(v, sat) for k, v in sorted(by_engine.items())},
    }
    if labels is not None:
        out["learning"] = {k: label_summary(v, len(by_route.get(k, []))) for k, v in sorted(by_label.items())}
    return out


def render(summary: dict[str, Any]) -> str:
    head = (f"{'':<22}{'requests':>9}{'errors':>7}{'tokens in':>11}{'tokens out':>11}{'cost $':>11}{'saved $':>11}"
            f"{'p50 ms':>9}{'p95 ms':>9}{'local':>7}{'escalated':>10}{'satisfaction':>17}")
    lines = []

    def row(name: str, g: dict[str, Any]) -> str:

        def fmt(v: float | None, spec: str) -> str:
            return format(v, spec) if v is not None else format("-", ">9")

        share = f"{g['local_share']:.0%}" if g["local_share"] is not None else "-"
        esc = f"{g['escalation_rate']:.0%}" if g.get("escalation_rate") is not None else "-"
        sat = f"{g['satisfaction']:.2f} ({g['feedback']})" if g.get("satisfaction") is not None else "-"
        return (f"{name[:21]:<22}{g['requests']:>9}{g['errors']:>7}{g['prompt_tokens']:>11}{g['completion_tokens']:>11}"
                f"{g['cost_usd']:>11.6f}{g['saved_usd']:>11.6f}{fmt(g['p50_ms'], '>9.1f')}{fmt(g['p95_ms'], '>9.1f')}"
                f"{share:>7}{esc:>10}{sat:>17}")

    for title, key in (("by route", "routes"), ("by engine", "engines")):
        lines += [title, head] + [row(k, g) for k, g in summary[key].items()] + [""]
    lines += [row("total", summary["total"])]
    if summary.get("learning"):
        def pct(v: float | None) -> str:
            return f"{v:.0%}" if v is not None else "-"

        lines += ["", "learning loop (route_labels)",
                  f"{'':<22}{'labels':>7}{'shadow share':>13}{'local quality':>14}{'agreement':>10}{'label $':>10}"
                  "  by source"]
        for alias, lb in summary["learning"].items():
            sources = ", ".join(f"{k} {v}" for k, v in lb["by_source"].items())
            lines.append(f"{alias[:21]:<22}{lb['labels']:>7}{pct(lb['labelling_share']):>13}"
                         f"{pct(lb['judged_local_quality']):>14}{pct(lb['shadow_agreement']):>10}"
                         f"{lb['label_cost_usd']:>10.4f}  {sources}")
    lines.append("saved = cost of sending the same tokens to the most expensive remote engine, minus actual cost")
    lines.append("satisfaction = mean feedback score, 0..1 (thumbs up 1, down 0; rating n of 5 -> (n-1)/4), (count)")
    lines.append("escalated = answered by another engine than the first it would have tried: fallback (not a "
                 "saturated pool's spill), a cascade "
                 "answered remotely, or a learned router's score at or above its threshold")
    return "\n".join(lines)
