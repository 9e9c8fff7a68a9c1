"""Prometheus metrics. Label values come from bounded sets: route aliases and engines
from config, tenants from API keys (others folded into "other"), statuses from a list.

Several worker processes (``turnout serve --workers N``) share one set of series through
prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set before the workers
start, each writes its values to memory-mapped files there, and :meth:`Metrics.exposed` reads
them all back, counters and histograms summed over the workers (gauges as each declares)."""

from __future__ import annotations

import contextlib
import os

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
        self.guard_cache = Counter("turnout_guard_cache_lookups", "Guard model results looked up by text digest, by "
                                   "model and result (hit: the text was scored before; turnout.guards.resultcache)",
                                   ["model", "result"], registry=r)
        self.errors = Counter("turnout_errors", "Errors by HTTP status", ["route", "status"], registry=r)
        self.ledger_failures = Counter("turnout_ledger_write_failures", "Ledger rows that could not be written",
                                       registry=r)
        self.overloaded = Counter("turnout_overloaded", "Requests refused at once because the gateway was full "
                                  "(server.max_in_flight); not in the ledger", registry=r)
        self.unauthenticated = Counter("turnout_unauthenticated", "Requests refused without a valid API key "
                                       "(auth: keys), by HTTP status; not in the ledger", ["status"], registry=r)
        self.cache = Counter("turnout_cache_lookups", "Answer cache lookups by result (miss, exact, semantic)",
                             ["result"], registry=r)
        self.in_flight = Gauge("turnout_in_flight", "Requests being handled", registry=r,
                               multiprocess_mode="livesum")  # several workers: the sum over those alive

    def route(self, alias: str | None) -> str:
        return alias if alias in self.routes or alias in self.engines else "unknown"

    def engine(self, name: str | None) -> str:
        return name if name in self.engines else "none"

    def tenant(self, name: str) -> str:
        return name if name in self.tenants else "other"

    def exposed(self) -> CollectorRegistry:
        """What ``/metrics`` shows: this registry, or with several worker processes a registry
        that reads every worker's values (prometheus_client's multiprocess mode)."""
        if not multiprocess():
            return self.registry
        from prometheus_client.multiprocess import MultiProcessCollector

        forget_dead_workers(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return merged


def multiprocess() -> bool:
    """Whether this process writes its metrics for several worker processes to share."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges (``turnout_in_flight``) of worker processes that are gone (a crash or a
    restart leaves their files behind); their counters stay, so totals never go backwards."""
    from pathlib import Path

    from prometheus_client import multiprocess

    for f in Path(folder).glob("gauge_live*_*.db"):
        pid = f.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):  # another worker's scrape removed it first
                multiprocess.mark_process_dead(int(pid), folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
