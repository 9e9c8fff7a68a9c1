"""Time series over the ledger for the dashboard, aggregated in SQL.

With a window (``since``), every query reads ``requests`` through its ``ts`` index
(``WHERE ts >= $1``) and groups by time bucket in SQL, so the cost follows the window,
not the table. The same SQL runs on SQLite and PostgreSQL (numbered placeholders,
``turnout.sqlshared``); only the bucket expression differs.

Definitions (also returned under ``definitions``):

* **local share**: answered requests (status ok) served by a local engine / answered requests.
* **escalated**: a request answered by an engine other than the first it would have tried:
  it has failed hops before its answer (fallback along the chain; a hedge's cancelled loser is
  not a failure), or its strategy is
  ``cascade`` and a remote engine answered (a cascade starts local), or its strategy is
  ``learned`` and the router's score reached the threshold (sent to the strong engines). The ledger does not
  keep the chain itself, so this is read from ``hops``, ``strategy`` and ``locality``. A spill (the hop
  ``spill``: a saturated pool passed the request on, a matter of load, not of the request) is not a
  failed hop: a request whose only hops are spills is not escalated; it counts in the spill rate.
  **escalation rate** = escalated / requests that got an engine's answer.
* **latency p50/p95**: nearest-rank percentiles of ``latency_ms`` over ok requests.
* **saved**: ``baseline_cost_usd - cost_usd`` (baseline: the same tokens at the priciest remote engine).
* **satisfaction**: mean normalised feedback score (0..1) of the requests made in the bucket.
* **drift**, per route (the learning loop, from ``requests`` and the ``route_labels`` table of
  :mod:`turnout.ledger.labels`, when it exists): the route's escalation rate; **judged local
  quality** = mean weak-answer score of the labels made in the bucket that judged it (shadow,
  feedback, a cascade's escalation as 0); **shadow agreement** = share of the bucket's shadow
  labels where the weak answer was as good as the strong one (as ``turnout usage``).
* **spill rate** = spilled / requests, per bucket, over the window, and per route over the window (from
  the ledger's ``labels``): the share of requests a saturated pool engine passed on to the next engine
  of the chain (label ``spill``; docs/fleet.md).
* **guard flag rate**, per route over the window (from the ledger's ``labels``): the share of
  requests the injection guard flagged, enforced and in shadow apart, and of those it blocked or,
  in shadow, would have blocked (docs/guards.md, "Shadow mode and learning from traffic").
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from turnout.sqlshared import Args

BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 7 * 86_400)
MAX_POINTS = 60

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

DEFINITIONS = {
    "local_share": "answered requests served by a local engine / answered requests",
    "escalated": "answered by an engine other than the first it would have tried: failed hops before the answer "
                 "(fallback; a hedge's cancelled loser is not one, nor a saturated pool's spill: see spill_rate), "
                 "or strategy 'cascade' answered by a remote engine, or strategy 'learned' with the "
                 "router's score at or above its threshold",
    "escalation_rate": "escalated / requests that got an engine's answer",
    "latency": "nearest-rank p50/p95 of latency_ms over ok requests",
    "saved_usd": "baseline_cost_usd - cost_usd (baseline: same tokens at the priciest remote engine)",
    "satisfaction": "mean normalised feedback (thumbs up 1, down 0; rating (n-1)/4) of the bucket's requests",
    "judged_local_quality": "mean weak-answer score of the routing labels that judged it (shadow calls, feedback, "
                            "a cascade's escalation as 0), by the time they were labelled",
    "shadow_agreement": "shadow labels where the weak answer was as good as the strong one / shadow labels",
    "spill_rate": "requests a saturated pool engine passed on to the next engine of the route's chain (label spill) "
                  "/ requests, per bucket and per route (docs/fleet.md); a spill is not an escalation",
    "guard_flag_rate": "requests the injection guard flagged (label injection) / requests, enforced and in shadow "
                       "apart; blocked: refused by it; would block: in shadow, would have been refused",
}


def _has(label: str) -> str:
    """The ledger row's comma-joined labels hold ``label`` (the whole label between commas)."""
    return f"REPLACE(',' || labels || ',', ',{label},', '') <> (',' || labels || ',')"


_GUARD_SQL = (f"SELECT alias, COUNT(*), SUM(CASE WHEN {_has('injection')} AND NOT {_has('injection_shadow')} "
              f"THEN 1 ELSE 0 END), SUM(CASE WHEN {_has('injection_blocked')} THEN 1 ELSE 0 END), "
              f"SUM(CASE WHEN {_has('injection_shadow')} THEN 1 ELSE 0 END), "
              f"SUM(CASE WHEN {_has('injection_would_block')} THEN 1 ELSE 0 END), "
              f"SUM(CASE WHEN {_has('spill')} THEN 1 ELSE 0 END) FROM requests")


def guard_rates(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Per route: requests, and the injection guard's flagged / blocked counts and rates, by mode."""
    out: dict[str, Any] = {}
    for alias, n, flagged, blocked, sh_flagged, sh_block, *_ in rows:
        n, flagged, blocked, sh_flagged, sh_block = (int(x or 0) for x in (n, flagged, blocked, sh_flagged, sh_block))
        out[str(alias)] = {"requests": n,
                           "enforce": {"flagged": flagged, "blocked": blocked, "flag_rate": _ratio(flagged, n),
                                       "block_rate": _ratio(blocked, n)},
                           "shadow": {"flagged": sh_flagged, "would_block": sh_block,
                                      "flag_rate": _ratio(sh_flagged, n), "would_block_rate": _ratio(sh_block, n)}}
    return out

def spill_rates(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Per route with any: requests, and those a saturated pool passed on to the next engine (spill)."""
    out: dict[str, Any] = {}
    for alias, n, *_, spilled in rows:
        if spilled:
            out[str(alias)] = {"requests": int(n), "spilled": int(spilled), "spill_rate": _ratio(int(spilled), int(n))}
    return out


# a failed hop other than a hedge's loser or a spill: more hops ('{"engine"' opens each, 9 characters,
# engine the first key) than '"hedge_lost"' codes (12) plus '"code":"spill"' codes (14; the recorder's
# orjson writes no spaces) in the hops JSON (none of these sequences can occur inside an escaped string).
# Compared times 252 (9 * 28 = 12 * 21 = 14 * 18) to stay in integers.
_FAILED_HOP = ("((LENGTH(hops) - LENGTH(REPLACE(hops, '{\"engine\"', ''))) * 28 > "
               "(LENGTH(hops) - LENGTH(REPLACE(hops, '\"hedge_lost\"', ''))) * 21 + "
               "(LENGTH(hops) - LENGTH(REPLACE(hops, '\"code\":\"spill\"', ''))) * 18)")
_ESCALATED = (f"(engine IS NOT NULL AND ({_FAILED_HOP} OR (strategy = 'cascade' AND locality = 'remote') "
              "OR (strategy = 'learned' AND score IS NOT NULL AND threshold IS NOT NULL AND score >= threshold)))")


def bucket_seconds(span: float) -> int:
    """The smallest bucket from ``BUCKETS`` that draws ``span`` seconds in at most MAX_POINTS points."""
    for b in BUCKETS:
        if span / b <= MAX_POINTS:
            return b
    return BUCKETS[-1]


def _bucket(dialect: str, origin: str, width: str, col: str = "ts") -> str:
    """The bucket number of ``col``; ``origin`` and ``width`` are placeholders."""
    # col >= origin always holds, so truncation is floor; PostgreSQL's CAST rounds, hence floor().
    if dialect == "postgres":
        return f"CAST(floor(({col} - {origin}) / {width}) AS BIGINT)"
    return f"CAST(({col} - {origin}) / {width} AS INTEGER)"


def compute(query: Query, dialect: str, hours: float | None = None, now: float | None = None,
            tenant: str | None = None) -> dict[str, Any]:
    """The dashboard's JSON: per-bucket series plus totals, for the last ``hours`` (all when None),
    of one tenant's requests (every tenant's when ``tenant`` is None: admins only)."""
    now = time.time() if now is None else now
    if hours is not None:
        since: float | None = now - hours * 3600
        assert since is not None
        start, end = since, now
    else:
        since = None
        lo_hi = query("SELECT MIN(ts), MAX(ts) FROM requests" + (" WHERE tenant = $1" if tenant is not None else ""),
                      (tenant,) if tenant is not None else ())
        lo, hi = lo_hi[0] if lo_hi else (None, None)
        if lo is None:
            return _empty(hours, None, now)
        start, end = float(lo), max(float(hi), now)
    b = bucket_seconds(end - start)
    origin = math.floor(start / b) * b
    n = max(1, math.ceil((end - origin) / b))
    conds, wparams = [], Args()  # the window's conditions: $1, $2; the bucket's origin and width after them
    if since is not None:
        conds.append(f"ts >= {wparams(since)}")
    if tenant is not None:
        conds.append(f"tenant = {wparams(tenant)}")
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    params = Args(wparams)
    bucket = params(origin), params(b)
    bk = _bucket(dialect, *bucket)

    groups = query(
        f"SELECT {bk} AS k, alias, engine, COUNT(*), "
        "SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN status = 'ok' AND locality = 'local' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN engine IS NOT NULL THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {_ESCALATED} THEN 1 ELSE 0 END), "
        "SUM(cost_usd), SUM(baseline_cost_usd), SUM(prompt_tokens), SUM(completion_tokens), "
        f"SUM(CASE WHEN {_has('spill')} THEN 1 ELSE 0 END) "
        f"FROM requests {where} GROUP BY 1, 2, 3",
        params)

    ok_where = (where + " AND" if where else "WHERE") + " status = 'ok' AND latency_ms IS NOT NULL"
    ranked = query(
        "SELECT k, latency_ms, rn, cnt FROM ("
        "  SELECT k, latency_ms, ROW_NUMBER() OVER (PARTITION BY k ORDER BY latency_ms) AS rn,"
        "         COUNT(*) OVER (PARTITION BY k) AS cnt"
        f"  FROM (SELECT {bk} AS k, latency_ms FROM requests {ok_where}) s) t "
        "WHERE rn = (50 * cnt + 99) / 100 OR rn = (95 * cnt + 99) / 100",
        params)

    rwhere = ("WHERE " + " AND ".join(f"r.{c}" for c in conds)) if conds else ""
    fb = query(
        f"SELECT {_bucket(dialect, *bucket, 'r.ts')} AS k, r.alias, COUNT(*), SUM(f.satisfaction) "
        f"FROM feedback f JOIN requests r ON r.request_id = f.request_id {rwhere} GROUP BY 1, 2",
        params)

    series = _series(n, groups, ranked, fb)
    labels = query(
        f"SELECT {bk} AS k, alias, COUNT(*), "
        "SUM(CASE WHEN weak_score IS NOT NULL THEN weak_score ELSE 0 END), "
        "SUM(CASE WHEN weak_score IS NOT NULL THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN source = 'shadow' AND weak_score IS NOT NULL THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN source = 'shadow' AND weak_score IS NOT NULL AND weak_score >= COALESCE(strong_score, 1.0) "
        f"THEN 1 ELSE 0 END) FROM route_labels {where} GROUP BY 1, 2",
        params) if _has_labels(query, dialect) else []
    return {
        "hours": hours,
        "since": since,
        "origin": origin,
        "until": now,
        "bucket_seconds": b,
        "buckets": [origin + i * b for i in range(n)],
        **series,
        "drift": _drift(n, groups, labels),
        **_per_route(query(f"{_GUARD_SQL} {where} GROUP BY alias", wparams)),
        "definitions": DEFINITIONS,
    }


def _per_route(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    return {"guards": guard_rates(rows), "spills": spill_rates(rows)}


def _has_labels(query: Query, dialect: str) -> bool:
    """Whether the learning loop's table exists (it is made with the first label)."""
    if dialect == "postgres":
        return bool(query("SELECT to_regclass('route_labels') IS NOT NULL", [])[0][0])
    return bool(query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'route_labels'", []))


def _drift(n: int, groups: list[tuple[Any, ...]], labels: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Per route: escalation rate, judged local quality and shadow agreement per bucket, and over the window."""
    keys = ("answered", "escalated", "labels", "judged_sum", "judged", "shadow", "agreed")
    per: dict[str, dict[str, list[float]]] = {}

    def route(alias: str) -> dict[str, list[float]]:
        return per.setdefault(alias, {k: [0.0] * n for k in keys})

    for k, alias, _engine, _req, _ok, _local, answered, escalated, *_ in groups:
        i = int(k)
        if 0 <= i < n and int(answered or 0):
            r = route(alias)
            r["answered"][i] += int(answered or 0)
            r["escalated"][i] += int(escalated or 0)
    for k, alias, count, judged_sum, judged, shadow, agreed in labels:
        i = int(k)
        if 0 <= i < n:
            r = route(alias)
            for key, v in zip(keys[2:], (count, judged_sum, judged, shadow, agreed), strict=True):
                r[key][i] += float(v or 0)  # PostgreSQL's SUM(bigint) is a Decimal
    out: dict[str, Any] = {}
    for alias, r in sorted(per.items()):
        total = {k: sum(v) for k, v in r.items()}
        out[alias] = {
            "escalation_rate": [_ratio(a, b) for a, b in zip(r["escalated"], r["answered"], strict=True)],
            "judged_local_quality": [_ratio(a, b) for a, b in zip(r["judged_sum"], r["judged"], strict=True)],
            "shadow_agreement": [_ratio(a, b) for a, b in zip(r["agreed"], r["shadow"], strict=True)],
            "labels": [int(x) for x in r["labels"]],
            "totals": {"escalation_rate": _ratio(total["escalated"], total["answered"]),
                       "judged_local_quality": _ratio(total["judged_sum"], total["judged"]),
                       "shadow_agreement": _ratio(total["agreed"], total["shadow"]),
                       "labels": int(total["labels"]), "shadow_labels": int(total["shadow"])},
        }
    return {"routes": out}


def _empty(hours: float | None, since: float | None, now: float) -> dict[str, Any]:
    return {"hours": hours, "since": since, "origin": now, "until": now, "bucket_seconds": BUCKETS[0], "buckets": [],
            "traffic": [], "series": {}, "totals": _totals_from({}, 0, 0.0), "satisfaction_by_route": {},
            "drift": {"routes": {}}, "guards": {}, "spills": {},
            "definitions": DEFINITIONS}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _series(n: int, groups: list[tuple[Any, ...]], ranked: list[tuple[Any, ...]],
            fb: list[tuple[Any, ...]]) -> dict[str, Any]:

    def zero() -> list[int]:
        return [0] * n

    traffic: dict[tuple[str, str], list[int]] = {}
    keys = ("requests", "ok", "local", "answered", "escalated", "cost_usd", "baseline_cost_usd",
            "prompt_tokens", "completion_tokens", "spilled")
    per: dict[str, list[Any]] = {k: zero() for k in keys}
    totals: dict[str, float] = defaultdict(float)
    for k, alias, engine, *vals in groups:
        i = int(k)
        if not 0 <= i < n:
            continue
        traffic.setdefault((alias, engine or "(none)"), zero())[i] += int(vals[0])
        for key, v in zip(keys, vals):  # PostgreSQL's SUM(bigint) is a Decimal
            x = float(v or 0) if key.endswith("_usd") else int(v or 0)
            per[key][i] += x
            totals[key] += x
    p50: list[float | None] = [None] * n
    p95: list[float | None] = [None] * n
    for k, latency, rn, cnt in ranked:
        i = int(k)
        if not 0 <= i < n:
            continue
        if rn == (50 * cnt + 99) // 100:
            p50[i] = float(latency)
        if rn == (95 * cnt + 99) // 100:
            p95[i] = float(latency)
    fb_count, fb_sum = zero(), [0.0] * n
    by_route: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for k, alias, count, total in fb:
        i = int(k)
        if 0 <= i < n:
            fb_count[i] += int(count)
            fb_sum[i] += float(total)
        by_route[alias][0] += int(count)
        by_route[alias][1] += float(total)
    return {
        "traffic": [{"route": r, "engine": e, "counts": c} for (r, e), c in sorted(traffic.items())],
        "series": {
            "requests": per["requests"],
            "local_share": [_ratio(a, b) for a, b in zip(per["local"], per["ok"])],
            "escalated": per["escalated"],
            "escalation_rate": [_ratio(a, b) for a, b in zip(per["escalated"], per["answered"])],
            "spilled": per["spilled"],
            "spill_rate": [_ratio(a, b) for a, b in zip(per["spilled"], per["requests"])],
            "cost_usd": [float(x) for x in per["cost_usd"]],
            "baseline_cost_usd": [float(x) for x in per["baseline_cost_usd"]],
            "saved_usd": [float(b - c) for c, b in zip(per["cost_usd"], per["baseline_cost_usd"])],
            "p50_ms": p50,
            "p95_ms": p95,
            "satisfaction": [_ratio(s, c) for s, c in zip(fb_sum, fb_count)],
            "feedback": fb_count,
        },
        "totals": _totals_from(totals, sum(fb_count), sum(fb_sum)),
        "satisfaction_by_route": {r: {"mean": _ratio(s, c), "count": int(c)} for r, (c, s) in sorted(by_route.items())},
    }


def _totals_from(t: dict[str, float], fb_count: int, fb_sum: float) -> dict[str, Any]:
    cost, base = float(t.get("cost_usd", 0.0)), float(t.get("baseline_cost_usd", 0.0))
    return {
        "requests": int(t.get("requests", 0)),
        "errors": int(t.get("requests", 0) - t.get("ok", 0)),
        "local_share": _ratio(t.get("local", 0), t.get("ok", 0)),
        "escalated": int(t.get("escalated", 0)),
        "escalation_rate": _ratio(t.get("escalated", 0), t.get("answered", 0)),
        "spilled": int(t.get("spilled", 0)),
        "spill_rate": _ratio(t.get("spilled", 0), t.get("requests", 0)),
        "cost_usd": cost,
        "baseline_cost_usd": base,
        "saved_usd": base - cost,
        "prompt_tokens": int(t.get("prompt_tokens", 0)),
        "completion_tokens": int(t.get("completion_tokens", 0)),
        "satisfaction": _ratio(fb_sum, fb_count),
        "feedback": fb_count,
    }


def sqlite_query(path: Any) -> Query:
    """A ``Query`` over a SQLite ledger file (one short-lived connection per call)."""
    from turnout import sqlitedb

    def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        conn = sqlitedb.connect(path)
        try:
            return [tuple(r) for r in sqlitedb.Numbered(conn).execute(sql, params)]
        finally:
            conn.close()

    return run
