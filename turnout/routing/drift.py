"""Drift of the learning loop, for ``/metrics``: per route and tenant, the share of requests
escalated (by the served threshold, and by the artifact's), and what the shadow calls found.

Metrics (registered on the gateway's registry by :class:`DriftMetrics`; the escalation series are
set per request by :meth:`DriftMetrics.observe`, the rest at scrape time by
:meth:`DriftMetrics.update`)::

    turnout_router_threshold{route, kind="served"|"artifact"}   the tracked and the calibrated threshold
    turnout_router_target_escalation{route}                     the configured share
    turnout_router_decisions_total{route, tenant}               answered requests a learned router scored,
                                                                or a cascade drafted
    turnout_router_escalated_total{route, tenant, kind="served"|"artifact"}
                          of those, sent to the strong engine (learned: at or above the served threshold;
                          cascade: escalated), and those the artifact's fixed threshold would have sent
    turnout_router_escalation_share{route, tenant, kind="served"|"artifact"}
                          the same as a share of the tenant's recent requests on the route (a moving
                          average over about the last 1,000)
    turnout_shadow_requests{route, tenant, result}              considered, scheduled, labelled, agreed,
                                                                failed, over_budget (counts so far)
    turnout_shadow_agreement{route, tenant}                     agreed / labelled (weak as good as strong)
    turnout_shadow_spend_usd{tenant}                            spent on the tenant's shadow calls today (UTC)
    turnout_router_retrains_total{route, result}                the retraining schedule's rounds: promoted,
                                                                refused, skipped, failed

Every series that comes from a tenant's traffic carries ``tenant`` (folded by the caller into the
bounded set of tenants of the gateway's keys, as ``turnout_requests_total``), so a viewer's
``/metrics`` shows its own; the thresholds, targets and retrains describe a route's router, not a
tenant's traffic. Example Prometheus alert rules are in docs/routing-eval.md ("Drift").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a cascade-only gateway builds these metrics without the `router` extra (numpy)
    from turnout.routing.shadow import ShadowStats
    from turnout.routing.threshold import ThresholdTracker

WINDOW = 1000  # requests the escalation share's moving average is about
# several worker processes (turnout.metrics): a gauge shows the value its worker set last, the one answering a scrape
# for those set at scrape time; the counters are summed over the workers
_LAST: dict[str, Any] = {"multiprocess_mode": "mostrecent"}


class _Share:
    """The mean of the first ``WINDOW`` values, then an exponential moving average with weight
    1/WINDOW: constant memory per route and tenant."""

    __slots__ = ("n", "value")

    def __init__(self) -> None:
        self.n, self.value = 0, 0.0

    def add(self, x: bool) -> float:
        self.n += 1
        self.value += (float(x) - self.value) / min(self.n, WINDOW)
        return self.value


class DriftMetrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.threshold = Gauge("turnout_router_threshold", "Learned router threshold: served (tracked on recent "
                               "traffic) and the artifact's", ["route", "kind"], registry=registry, **_LAST)
        self.target = Gauge("turnout_router_target_escalation", "Configured share of strong calls", ["route"],
                            registry=registry, **_LAST)
        self.decisions = Counter("turnout_router_decisions", "Answered requests a learned router scored or a cascade "
                                 "drafted", ["route", "tenant"], registry=registry)
        self.escalated = Counter("turnout_router_escalated", "Of those, sent to the strong engine (served), and those "
                                 "the artifact's own threshold would have sent (artifact)", ["route", "tenant", "kind"],
                                 registry=registry)
        self.share = Gauge("turnout_router_escalation_share", "Share of the tenant's recent requests on the route "
                           "sent to the strong engine: by the served threshold, and by the artifact's",
                           ["route", "tenant", "kind"], registry=registry, **_LAST)
        self.shadow = Gauge("turnout_shadow_requests", "Shadow evaluation counts since start",
                            ["route", "tenant", "result"], registry=registry, **_LAST)
        self.agreement = Gauge("turnout_shadow_agreement", "Shadow labels where the weak answer was as good as the "
                               "strong one / shadow labels", ["route", "tenant"], registry=registry, **_LAST)
        self.spend = Gauge("turnout_shadow_spend_usd", "Spent on the tenant's shadow calls today (UTC)", ["tenant"],
                           registry=registry, **_LAST)
        self.retrains = Counter("turnout_router_retrains", "Rounds of the retraining schedule by result (promoted, "
                                "refused, skipped, failed)", ["route", "result"], registry=registry)
        self._shares: dict[tuple[str, str, str], _Share] = {}

    def retrained(self, alias: str, result: str) -> None:
        self.retrains.labels(alias, result).inc()

    def observe(self, alias: str, tenant: str, escalated: bool, artifact_escalated: bool | None = None) -> None:
        """One answered request of ``tenant`` (already folded) on ``alias``: escalated by the served
        decision, and (learned routes) whether the artifact's threshold would have escalated it."""
        self.decisions.labels(alias, tenant).inc()
        for kind, value in (("served", escalated), ("artifact", artifact_escalated)):
            if value is None:
                continue
            if value:
                self.escalated.labels(alias, tenant, kind).inc()
            share = self._shares.setdefault((alias, tenant, kind), _Share())
            self.share.labels(alias, tenant, kind).set(share.add(value))

    def update(self, tracker: ThresholdTracker | None, stats: ShadowStats | None,
               tenant_of: Callable[[str], str] = str) -> None:
        """Copy the tracker's and the shadow loop's state into the gauges (call before a scrape);
        ``tenant_of`` folds a tenant into the bounded set the metrics use."""
        for alias, st in (tracker.snapshot() if tracker else {}).items():
            self.threshold.labels(alias, "served").set(st.threshold)
            self.threshold.labels(alias, "artifact").set(st.artifact_threshold)
            self.target.labels(alias).set(st.target)
        if stats is None:
            return
        counts: dict[tuple[str, str, str], int] = {}
        for (alias, tenant, result), n in list(stats.tenants.items()):
            key = (alias, tenant_of(tenant), result)
            counts[key] = counts.get(key, 0) + n
        for (alias, tenant, result), n in counts.items():
            self.shadow.labels(alias, tenant, result).set(n)
            if result == "labelled" and n:
                self.agreement.labels(alias, tenant).set(counts.get((alias, tenant, "agreed"), 0) / n)
        spent: dict[str, float] = {}
        for tenant, usd in list(stats.spent_by_tenant.items()):
            spent[tenant_of(tenant)] = spent.get(tenant_of(tenant), 0.0) + usd
        for tenant in {t for (_, t, _) in counts}:
            self.spend.labels(tenant).set(spent.get(tenant, 0.0))  # 0 on a new day
