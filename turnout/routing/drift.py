"""Drift of the learning loop, for ``/metrics``: per route, the threshold served against the
artifact's, the share of requests escalated, and what the shadow calls found.

Metrics (registered on the gateway's registry by :class:`DriftMetrics`, set at scrape time by
:meth:`DriftMetrics.update`)::

    turnout_router_threshold{route, kind="served"|"artifact"}   the tracked and the calibrated threshold
    turnout_router_escalation_share{route, kind="served"|"artifact"}
                          share of the recent window sent to the strong engine by the served threshold,
                          and the share the artifact's fixed threshold would have sent
    turnout_router_target_escalation{route}                     the configured share
    turnout_shadow_requests{route, result}                      considered, scheduled, labelled, agreed,
                                                                failed, over_budget (counts so far)
    turnout_shadow_agreement{route}                             agreed / labelled (weak as good as strong)
    turnout_shadow_spend_usd                                    spent on shadow calls today (UTC)
    turnout_router_retrains_total{route, result}                the retraining schedule's rounds: promoted,
                                                                refused, skipped, failed

An example Prometheus alert rule is in docs/routing-eval.md ("Drift").
"""

from __future__ import annotations

import math
from typing import Any

from turnout.routing.shadow import ShadowStats
from turnout.routing.threshold import ThresholdTracker

RESULTS = ("considered", "scheduled", "labelled", "agreed", "failed", "over_budget")


class DriftMetrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.threshold = Gauge("turnout_router_threshold", "Learned router threshold: served (tracked on recent "
                               "traffic) and the artifact's", ["route", "kind"], registry=registry)
        self.share = Gauge("turnout_router_escalation_share", "Share of the recent window sent to the strong "
                           "engine: by the served threshold, and by the artifact's", ["route", "kind"],
                           registry=registry)
        self.target = Gauge("turnout_router_target_escalation", "Configured share of strong calls", ["route"],
                            registry=registry)
        self.shadow = Gauge("turnout_shadow_requests", "Shadow evaluation counts since start", ["route", "result"],
                            registry=registry)
        self.agreement = Gauge("turnout_shadow_agreement", "Shadow labels where the weak answer was as good as the "
                               "strong one / shadow labels", ["route"], registry=registry)
        self.spend = Gauge("turnout_shadow_spend_usd", "Spent on shadow calls today (UTC)", registry=registry)
        self.retrains = Counter("turnout_router_retrains", "Rounds of the retraining schedule by result (promoted, "
                                "refused, skipped, failed)", ["route", "result"], registry=registry)

    def retrained(self, alias: str, result: str) -> None:
        self.retrains.labels(alias, result).inc()

    def update(self, tracker: ThresholdTracker | None, stats: ShadowStats | None) -> None:
        """Copy the tracker's and the shadow loop's state into the gauges (call before a scrape)."""
        for alias, st in (tracker.snapshot() if tracker else {}).items():
            self.threshold.labels(alias, "served").set(st.threshold)
            self.threshold.labels(alias, "artifact").set(st.artifact_threshold)
            self.target.labels(alias).set(st.target)
            for kind, value in (("served", st.served_share), ("artifact", st.escalation_share)):
                if not math.isnan(value):
                    self.share.labels(alias, kind).set(value)
        if stats is None:
            return
        for result in RESULTS:
            for alias, n in getattr(stats, result).items():
                self.shadow.labels(alias, result).set(n)
        for alias, n in stats.labelled.items():
            if n:
                self.agreement.labels(alias).set(stats.agreed.get(alias, 0) / n)
        self.spend.set(stats.spent_usd)
