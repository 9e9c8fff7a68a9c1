"""The per-endpoint rows of pool engines in ``/metrics``, read from the pools at scrape time (a
Prometheus custom collector: nothing on the request path)::

    turnout_endpoint_up{engine,endpoint}              1 up, 0 ejected or draining
    turnout_endpoint_state{engine,endpoint,state}     1 for its state (up | ejected | draining)
    turnout_endpoint_in_flight{engine,endpoint}       the gateway's requests there now
    turnout_endpoint_requests_total{engine,endpoint,outcome}   ok | failed
    turnout_endpoint_ejections_total{engine,endpoint}
    turnout_endpoint_readmissions_total{engine,endpoint}
    turnout_endpoint_server_waiting{engine,endpoint}  the server's queue depth, where it publishes one
    turnout_endpoint_kv_cache_use{engine,endpoint}    the server's KV-cache use (0..1), where published
    turnout_pool_waiting{engine}                      requests waiting in the gateway for a free endpoint
    turnout_pool_spills_total{engine}                 requests passed on by a saturated pool

The spill rate of a route is ``turnout_spills_total{route}`` (``turnout.metrics``) over its requests.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from turnout.engines.admission import Refused
from turnout.engines.base import Engine
from turnout.engines.pool import PoolEngine

STATES = ("up", "ejected", "draining")


def pool_of(engine: Engine) -> PoolEngine | None:
    """The pool inside an engine's wrappers (``ResilientEngine``), or None (a ``Refused`` engine was
    never started: it has no pool to report)."""
    seen: Engine | None = engine
    while seen is not None:
        if isinstance(seen, Refused):
            return None
        if isinstance(seen, PoolEngine):
            return seen
        seen = getattr(seen, "inner", None)
    return None


def pools(engines: Mapping[str, Engine]) -> dict[str, PoolEngine]:
    return {name: p for name, e in engines.items() if (p := pool_of(e)) is not None}


class PoolCollector(Collector):
    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.pools = pools(engines)

    def collect(self) -> Iterator[Metric]:
        lbl = ["engine", "endpoint"]
        up = GaugeMetricFamily("turnout_endpoint_up", "1 when the pool's endpoint gets traffic", labels=lbl)
        state = GaugeMetricFamily("turnout_endpoint_state", "The endpoint's state (up, ejected, draining)",
                                  labels=[*lbl, "state"])
        in_flight = GaugeMetricFamily("turnout_endpoint_in_flight", "The gateway's requests at the endpoint now",
                                      labels=lbl)
        requests = CounterMetricFamily("turnout_endpoint_requests", "Requests the endpoint answered or failed",
                                       labels=[*lbl, "outcome"])
        ejections = CounterMetricFamily("turnout_endpoint_ejections", "Times the endpoint was ejected", labels=lbl)
        readmissions = CounterMetricFamily("turnout_endpoint_readmissions", "Times a probe re-admitted it",
                                           labels=lbl)
        waiting = GaugeMetricFamily("turnout_endpoint_server_waiting", "Requests waiting at the server, as it "
                                    "publishes them", labels=lbl)
        kv = GaugeMetricFamily("turnout_endpoint_kv_cache_use", "The server's KV-cache use (0..1), as it publishes "
                               "it", labels=lbl)
        pool_waiting = GaugeMetricFamily("turnout_pool_waiting", "Requests waiting in the gateway for a free endpoint",
                                         labels=["engine"])
        spills = CounterMetricFamily("turnout_pool_spills", "Requests a saturated pool passed on to the next engine",
                                     labels=["engine"])
        for name, pool in self.pools.items():
            pool_waiting.add_metric([name], pool.waiting)
            spills.add_metric([name], pool.spills)
            for e in pool.endpoints:
                key = [name, e.name]
                up.add_metric(key, 1.0 if e.eligible else 0.0)
                for s in STATES:
                    state.add_metric([*key, s], 1.0 if e.state == s else 0.0)
                in_flight.add_metric(key, e.in_flight)
                requests.add_metric([*key, "ok"], e.served)
                requests.add_metric([*key, "failed"], e.failed)
                ejections.add_metric(key, e.ejections)
                readmissions.add_metric(key, e.readmissions)
                s_load = e.published()
                if s_load is not None and s_load.waiting is not None:
                    waiting.add_metric(key, s_load.waiting)
                if s_load is not None and s_load.kv_use is not None:
                    kv.add_metric(key, s_load.kv_use)
        yield from (up, state, in_flight, requests, ejections, readmissions, waiting, kv, pool_waiting, spills)
