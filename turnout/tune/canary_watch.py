"""The canary watcher's measure and decision (``turnout adapters watch``, issue 26 item 5).

Per variant of the function, since the canary began, from the ledger (``requests`` and ``feedback``):

- ``first``: first attempts (one per call);
- ``invalid_rate``: first attempts whose answer failed the output schema or a check;
- ``escalation_rate``: calls escalated (``function_attempt = 'escalated'``) per first attempt;
- ``satisfaction``: mean feedback satisfaction (judged outcomes: thumbs, ratings) and how many.

The canary is rolled back when, once both it and the variant it copies have ``min_samples`` first
attempts, its invalid-output or escalation rate exceeds the other's by more than the configured
margin, or (when both have ``min_samples`` judged answers) its satisfaction is lower by more than
``max_satisfaction_drop``; otherwise it is promoted to all traffic. Before that it waits.
"""

from __future__ import annotations

from typing import Any

from turnout.config_tune import CanaryConfig
from turnout.functions.experiment import Query


def measure(query: Query, function: str, *variants: str | None, since: float) -> dict[str, dict[str, Any]]:
    names = [v for v in variants if v]
    out: dict[str, dict[str, Any]] = {v: {"first": 0, "invalid": 0, "escalated": 0, "judged": 0,
                                          "satisfaction": None} for v in names}
    marks = ", ".join(f"${i}" for i in range(3, 3 + len(names)))
    rows = query("SELECT variant, function_attempt, function_outcome FROM requests WHERE function = $1 AND ts >= $2 "
                 f"AND variant IN ({marks})", [function, since, *names])
    for variant, attempt, outcome in rows:
        m = out[str(variant)]
        if attempt == "first":
            m["first"] += 1
            m["invalid"] += str(outcome or "").startswith("invalid")
        elif attempt == "escalated":
            m["escalated"] += 1
    judged = query("SELECT r.variant, COUNT(*), SUM(f.satisfaction) FROM feedback f JOIN requests r ON r.request_id = "
                   f"f.request_id WHERE r.function = $1 AND r.ts >= $2 AND r.variant IN ({marks}) GROUP BY r.variant",
                   [function, since, *names])
    for variant, n, total in judged:
        out[str(variant)]["judged"] = int(n)
        out[str(variant)]["satisfaction"] = round(float(total or 0.0) / int(n), 4) if n else None
    for m in out.values():
        m["invalid_rate"] = round(m["invalid"] / m["first"], 4) if m["first"] else None
        m["escalation_rate"] = round(m["escalated"] / m["first"], 4) if m["first"] else None
    return out


def decide(metrics: dict[str, dict[str, Any]], canary: str | None, base: str | None,
           cfg: CanaryConfig) -> tuple[str, list[str]]:
    """("wait" | "promoted" | "rolled_back", the reasons)."""
    c, b = metrics.get(canary or ""), metrics.get(base or "")
    if c is None or b is None:
        return "wait", ["the canary or its base variant is not measured"]
    if c["first"] < cfg.min_samples or b["first"] < cfg.min_samples:
        return "wait", [f"{canary} has {c['first']} calls, {base} {b['first']}; each needs {cfg.min_samples} "
                        "(tune.canary.min_samples)"]
    regressions = []
    for rate, margin in (("invalid_rate", cfg.max_invalid_increase), ("escalation_rate", cfg.max_escalation_increase)):
        if c[rate] - b[rate] > margin + 1e-9:
            regressions.append(f"{rate.replace('_', ' ')} {c[rate]:.3f} against {b[rate]:.3f} for {base} "
                               f"(more than +{margin})")
    judged = c["judged"] >= cfg.min_samples and b["judged"] >= cfg.min_samples
    if judged and b["satisfaction"] - c["satisfaction"] > cfg.max_satisfaction_drop + 1e-9:
        regressions.append(f"satisfaction {c['satisfaction']:.3f} against {b['satisfaction']:.3f} for {base} "
                           f"(a drop of more than {cfg.max_satisfaction_drop})")
    if regressions:
        return "rolled_back", regressions
    return "promoted", [f"no regression over {c['first']} calls against {b['first']} for {base}"
                        + ("" if judged else "; too few judged answers to compare satisfaction")]
