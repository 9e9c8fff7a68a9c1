"""A function's figures from the ledger, per variant and template version: calls, feedback mean
with a 95% interval, cost and latency per call, retry and escalation rates, and (for bandits)
the current traffic shares. ``turnout functions report`` prints them; the gateway serves them
to the caller's own tenant at ``GET /v1/turnout/functions/{name}/report``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout.functions.experiment import Query
from turnout.sqlshared import Args

if TYPE_CHECKING:
    from turnout.config import TurnoutConfig
    from turnout.functions.spec import Function

Z95 = 1.959964


def interval(n: int, total: float, squares: float) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of a 0..1 score: normal approximation, clipped to [0, 1]; no interval under 2."""
    if n == 0:
        return None, None, None
    mean = total / n
    if n < 2:
        return mean, None, None
    var = max(0.0, (squares - n * mean * mean) / (n - 1))
    half = Z95 * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def report(query: Query, fn: Function, tenant: str | None = None, since: float | None = None) -> dict[str, Any]:
    """Per variant and template hash; ``tenant`` None means every tenant (the operator's view)."""
    params = Args()
    conds = [("function", "=", params(fn.name))]
    if tenant is not None:
        conds.append(("tenant", "=", params(tenant)))
    if since is not None:
        conds.append(("ts", ">=", params(since)))

    def where_of(t: str) -> str:  # the same placeholders, with or without the table's alias
        return " AND ".join(f"{t}{column} {op} {mark}" for column, op, mark in conds)

    where = where_of("")
    rows = query(
        "SELECT variant, template_hash, "
        "SUM(CASE WHEN function_attempt = 'first' THEN 1 ELSE 0 END), COUNT(*), SUM(cost_usd), SUM(latency_ms), "
        "SUM(CASE WHEN function_attempt = 'retry' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN function_attempt = 'escalated' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN substr(function_outcome, 1, 7) = 'invalid' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN locality = 'local' AND function_outcome IN ('valid', 'unchecked') THEN 1 ELSE 0 END), "
        "SUM(baseline_cost_usd), MIN(ts), MAX(ts) "
        f"FROM requests WHERE {where} GROUP BY variant, template_hash", params)
    fb_where = where_of("r.")
    fb = {(v, h): (int(n), float(s or 0), float(q or 0)) for v, h, n, s, q in query(
        "SELECT r.variant, r.template_hash, COUNT(*), SUM(f.satisfaction), SUM(f.satisfaction * f.satisfaction) "
        f"FROM feedback f JOIN requests r ON r.request_id = f.request_id WHERE {fb_where} "
        "GROUP BY r.variant, r.template_hash", params)}
    out = []
    for v, h, calls, n_rows, cost, latency, retries, esc, invalid, local_ok, base, first_ts, last_ts in rows:
        calls = int(calls or 0)
        n, s, q = fb.get((v, h), (0, 0.0, 0.0))
        mean, lo, hi = interval(n, s, q)
        per = max(calls, 1)
        out.append({
            "variant": v, "template_hash": h, "current": v in fn.variants and fn.variants[v].template_hash == h,
            "calls": calls, "attempts": int(n_rows), "feedback_n": n, "feedback_mean": mean,
            "feedback_low": lo, "feedback_high": hi, "cost_per_call_usd": float(cost or 0) / per,
            "latency_ms_per_call": float(latency or 0) / per, "retry_rate": int(retries or 0) / per,
            "escalation_rate": int(esc or 0) / per, "invalid_answers": int(invalid or 0),
            "handled_locally": int(local_ok or 0) / per, "frontier_cost_per_call_usd": float(base or 0) / per,
            "first_ts": first_ts, "last_ts": last_ts,
        })
    out.sort(key=lambda r: (str(r["variant"]), -(r["last_ts"] or 0)))
    return {"function": fn.name, "tenant": tenant, "experiment": fn.spec.experiment.model_dump(), "variants": out}


def with_allocation(rep: dict[str, Any], fn: Function, query: Query, tenant: str | None) -> dict[str, Any]:
    from turnout.functions import experiment

    alloc = experiment.allocate(fn, experiment.evidence_for(fn, query, tenant)) \
        if fn.spec.experiment.mode == "bandit" else experiment.allocate(fn)
    rep["allocation"] = {"shares": alloc.shares, "p_best": alloc.p_best, "winner": alloc.winner, "note": alloc.note}
    return rep


def ledger_query(cfg: TurnoutConfig, db: str | None = None) -> Query:
    """Read-only SQL over the configured ledger: PostgreSQL when ``storage.postgres_dsn`` is set
    (and no ``db`` file is given), else the SQLite file."""
    if cfg.storage.postgres_dsn and db is None:
        from turnout import pgdb

        dsn, schema = cfg.storage.postgres_dsn, cfg.storage.postgres_schema

        def pg(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            conn = pgdb.Connection(dsn, search_path=schema)  # one use: the CLI's report
            try:
                return conn.run(lambda cur: list(cur.execute(sql, tuple(params)).fetchall()))
            finally:
                conn.close()

        return pg
    from turnout.ledger.stats import sqlite_query

    path = Path(db or cfg.storage.sqlite_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ledger file (give --db, or run the gateway first)")
    return sqlite_query(path)


def format_report(rep: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    lines = [f"function {rep['function']}" + (f" (tenant {rep['tenant']})" if rep.get("tenant") else " (all tenants)")]
    head = (f"{'variant':<12} {'template':<16} {'calls':>6} {'feedback (95% CI)':>22} {'cost/call':>11} "
            f"{'ms/call':>8} {'retry':>6} {'escal.':>6} {'local':>6}")
    lines.append(head)
    for r in rep["variants"]:
        fb = "-" if r["feedback_mean"] is None else (
            f"{r['feedback_mean']:.2f} n={r['feedback_n']}" if r["feedback_low"] is None else
            f"{r['feedback_mean']:.2f} [{r['feedback_low']:.2f},{r['feedback_high']:.2f}] n={r['feedback_n']}")
        lines.append(f"{r['variant']:<12} {r['template_hash'] + ('' if r['current'] else '*'):<16} {r['calls']:>6} "
                     f"{fb:>22} {r['cost_per_call_usd']:>11.3g} {r['latency_ms_per_call']:>8.0f} "
                     f"{pct(r['retry_rate']):>6} {pct(r['escalation_rate']):>6} {pct(r['handled_locally']):>6}")
    if any(not r["current"] for r in rep["variants"]):
        lines.append("* an earlier template version of that variant")
    alloc = rep.get("allocation")
    if alloc:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in alloc["shares"].items())
        lines.append(f"traffic: {shares} ({alloc['note']})")
    return "\n".join(lines)
