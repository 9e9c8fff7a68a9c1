"""Prometheus metrics. Label values come from bounded sets: route aliases and engines
from config, tenants from API keys (others folded into "other"), statuses from a list."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, routes: set[str], engines: set[str]) -> None:
        self.registry = CollectorRegistry()
        self.routes, self.engines = routes, engines
        self.tenants: set[str] = {"anonymous"}
        r = self.registry
        lbl = ["route", "engine", "tenant", "status"]
        self.requests = Counter("turnout_requests", "Chat requests by outcome", lbl, registry=r)
        self.tokens = Counter("turnout_tokens", "Tokens by direction", ["route", "engine", "tenant", "direction"],
                              registry=r)
        self.cost = Counter("turnout_cost_usd", "Cost in USD", ["route", "engine", "tenant"], registry=r)
        self.latency = Histogram("turnout_request_seconds", "Whole-request latency", ["route", "engine"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("turnout_time_to_first_token_seconds", "Time to first streamed token",
                              ["route", "engine"], buckets=LATENCY_BUCKETS, registry=r)
        self.fallbacks = Counter("turnout_fallbacks", "Failed hops before an answer or error", ["route", "engine"],
                                 registry=r)
        self.spills = Counter("turnout_spills", "Requests a saturated pool engine passed on to the next engine of "
                              "the route's chain (spill-over); spill rate = this / turnout_requests",
                              ["route", "engine"], registry=r)
        self.escalations = Counter("turnout_escalations", "Cascade escalations to a stronger engine", ["route"],
                                   registry=r)
        self.guard_findings = Counter("turnout_guard_findings", "Guard findings by kind", ["kind"], registry=r)
        self.guard_inspected = Counter("turnout_guard_inspected", "Requests the input guards inspected, by route",
                                       ["route"], registry=r)
        self.guard_verdicts = Counter(
            "turnout_guard_verdicts", "Requests a guard kind flagged, or would block (verdict=blocked), by route and "
            "mode (shadow: never acted on); flag rate = this / turnout_guard_inspected",
            ["route", "kind", "mode", "verdict"], registry=r)
        self.errors = Counter("turnout_errors", "Errors by HTTP status", ["route", "status"], registry=r)
        self.ledger_failures = Counter("turnout_ledger_write_failures", "Ledger rows that could not be written",
                                       registry=r)
        self.overloaded = Counter("turnout_overloaded", "Requests refused at once because the gateway was full "
                                  "(server.max_in_flight); not in the ledger", registry=r)
        self.unauthenticated = Counter("turnout_unauthenticated", "Requests refused without a valid API key "
                                       "(auth: keys), by HTTP status; not in the ledger", ["status"], registry=r)
        self.cache = Counter("turnout_cache_lookups", "Answer cache lookups by result (miss, exact, semantic)",
                             ["result"], registry=r)
        self.in_flight = Gauge("turnout_in_flight", "Requests being handled", registry=r)

    def route(self, alias: str | None) -> str:
        return alias if alias in self.routes or alias in self.engines else "unknown"

    def engine(self, name: str | None) -> str:
        return name if name in self.engines else "none"

    def tenant(self, name: str) -> str:
        return name if name in self.tenants else "other"
