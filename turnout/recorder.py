"""The pipeline's record step: settle the budget reservation, count the request in the
metrics, and write its ledger row (with its audit entry) — always, whatever happened.

A request refused without a valid API key in ``auth: keys`` mode (no key, an unknown, revoked
or expired one, a bad header or body before a key was checked) writes no ledger row and so no
audit entry: anyone can send those, at any rate, and stored history must not grow with them.
They are counted in ``turnout_unauthenticated_total{status}`` and summed up in one log line at
most every ``ANONYMOUS_LOG_EVERY_S`` seconds.

Cost is what the engine stack spent (every attempt that produced output: a cascade's weak
draft too); the baseline is what the dearest remote engine would have charged for the same
tokens, for the saving in `turnout usage`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from turnout.call import Call
from turnout.engines.base import EngineInfo, Usage
from turnout.errors import CircuitOpen, EngineError
from turnout.governance.access import Access
from turnout.guards.scrub import scrub
from turnout.ledger.base import Ledger, LedgerRow
from turnout.metrics import Metrics

log = logging.getLogger("turnout.ledger")
ANONYMOUS_LOG_EVERY_S = 10.0
# The row's error quotes upstream messages (all engines failed: each one's); like each hop's, it is
# scrubbed of secrets and pattern PII (turnout.guards.scrub) and bounded before it is stored.
ERROR_CHARS = 600


def _hop(call: Call, h: EngineError) -> dict[str, object]:
    """One failed hop for the ledger, its message scrubbed and bounded (an upstream's 400 may quote
    the prompt: e-mail addresses, keys); a stream break that was rescued says where and how
    (``after_chars`` sent before the break, ``rescue`` prefill|restart, ``by`` which engine); a
    request the engine's circuit refused lists the ``attempts`` it had made there first (a probe's
    503: the circuit reopened, so its retry was refused)."""
    hop: dict[str, object] = {"engine": h.engine, "error": scrub(h.message), "code": h.code}
    if isinstance(h, CircuitOpen):  # refused by the circuit: after which failures of its own here, if any
        hop["attempts"] = [{"code": e.code, "error": scrub(e.message)} for e in h.attempts]
    rescue = call.trail.rescue_of(h)
    if rescue is not None:
        hop.update(after_chars=rescue.after_chars, rescue=rescue.how, by=rescue.by)
    return hop


@dataclass(slots=True)
class _Series:
    """One label set's metric children (route, engine, tenant and status)."""

    requests: Any
    tokens_in: Any
    tokens_out: Any
    cost: Any
    latency: Any
    ttft: Any


class Recorder:
    def __init__(self, ledger: Ledger, metrics: Metrics, access: Access | None, baseline: EngineInfo | None) -> None:
        self.ledger, self.metrics, self.access, self.baseline = ledger, metrics, access, baseline
        self._unlogged: dict[int, int] = {}  # refusals without a key since the last log line, by status
        self._logged_at = -ANONYMOUS_LOG_EVERY_S
        self._children: dict[tuple[str, str, str, str], _Series] = {}
        scrub("")  # builds the secrets catalogue now, not in the first failed request's record step

    def anonymous(self, call: Call) -> bool:
        """Whether ``call`` came from nobody: keys mode, no valid key, not a task's step."""
        return self.access is not None and self.access.mode == "keys" and call.key is None \
            and call.on_behalf_of is None

    def unauthenticated(self, status: int, why: str, where: str) -> None:
        """Count a refusal of a caller without a valid key; log a summary at most every
        ``ANONYMOUS_LOG_EVERY_S`` seconds (the latest refusal's reason and path)."""
        self.metrics.unauthenticated.labels(str(status)).inc()
        self._unlogged[status] = self._unlogged.get(status, 0) + 1
        now = time.monotonic()
        if now - self._logged_at >= ANONYMOUS_LOG_EVERY_S:
            counts = ", ".join(f"{n} x HTTP {s}" for s, n in sorted(self._unlogged.items()))
            log.warning("refused without a valid API key (not in the ledger): %s in the last %.0f s at most; "
                        "latest on %.100r: %.200s", counts, ANONYMOUS_LOG_EVERY_S, where, why)
            self._unlogged, self._logged_at = {}, now

    async def record(self, call: Call) -> None:
        d, e = call.decision, call.trail.engine
        latency = time.perf_counter() - call.t0
        u = call.trail.usage  # every billed token (turnout.engines.trail), as the client's usage says
        cost = call.trail.cost()
        once = call.trail.delivered_usage  # the baseline engine would have answered once
        baseline = self.baseline.cost(once.prompt_tokens, once.completion_tokens, 0.0) if self.baseline else cost
        if self.access is not None and call.reservation is not None:
            try:
                await self.access.settle(call.reservation, u.prompt_tokens + u.completion_tokens, cost)
            except Exception:
                log.exception("settling the budget reservation of %s failed", call.request_id)
        if self.anonymous(call):  # counted apart and logged; never a row nor an audit entry
            self.unauthenticated(call.http_status, call.error or "", "chat or embeddings")
            return
        self._count(call, cost, latency, u)  # the request metrics stay the ledger's sums
        hops = call.trail.hops
        spilled = any(h.code == "spill" for h in hops)  # a saturated pool passed it on (turnout.engines.pool)
        row = LedgerRow(
            ts=call.ts,
            request_id=call.request_id,
            tenant=call.tenant,
            alias=d.alias if d else call.route or "-",  # a guard refusal comes before the decision
            rule=d.rule if d else None,
            reason=d.explanation if d else None,
            strategy=d.strategy if d else None,
            score=d.score if d else None,
            threshold=d.threshold if d else None,
            engine=e.name if e else None,
            endpoint=call.trail.endpoint,
            locality=e.locality if e else None,
            hops=orjson.dumps([_hop(call, h) for h in hops]).decode(),
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            latency_ms=latency * 1000,
            ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
            cost_usd=cost,
            baseline_cost_usd=baseline,
            status=call.status,
            http_status=call.http_status,
            stream=int(call.stream),
            error=scrub(call.error, ERROR_CHARS),
            labels=",".join(sorted(call.labels | ({"spill"} if spilled else set()))),
            key_id=call.key.key_id if call.key else None,
            trace_id=call.trace_id,
            signals=orjson.dumps(d.signals).decode() if d is not None and d.signals else None,
            **(call.function.ledger_fields() if call.function else {}),
        )
        try:
            await self.ledger.record(row)
        except Exception:  # the answer stands; the failure is loud in the log and the metrics
            self.metrics.ledger_failures.inc()
            log.exception("ledger write failed for request %s", call.request_id)
            return
        if call.capture is not None:  # queued, written off the request path (turnout.ledger.capture_writer)
            self.ledger.keep(call.capture)

    def _series(self, route: str, engine: str, tenant: str, status: str) -> _Series:
        """The metrics' children of one label set, looked up once: prometheus_client's ``labels()``
        costs about as much as the ``inc()`` itself. Bounded as the labels are (``Metrics``)."""
        key = (route, engine, tenant, status)
        series = self._children.get(key)
        if series is None:
            m = self.metrics
            series = self._children[key] = _Series(
                m.requests.labels(route, engine, tenant, status), m.tokens.labels(route, engine, tenant, "in"),
                m.tokens.labels(route, engine, tenant, "out"), m.cost.labels(route, engine, tenant),
                m.latency.labels(route, engine), m.ttft.labels(route, engine))
        return series

    def _count(self, call: Call, cost: float, latency: float, u: Usage) -> None:
        m, d, e = self.metrics, call.decision, call.trail.engine
        route = m.route(d.alias if d else None)
        engine = m.engine(e.name if e else None)
        s = self._series(route, engine, m.tenant(call.tenant), call.status)
        s.requests.inc()
        if u.prompt_tokens or u.completion_tokens:
            s.tokens_in.inc(u.prompt_tokens)
            s.tokens_out.inc(u.completion_tokens)
        if cost:
            s.cost.inc(cost)
        s.latency.observe(latency)
        if call.ttft is not None:
            s.ttft.observe(call.ttft)
        if call.trail.hops:
            m.fallbacks.labels(route, engine).inc(len(call.trail.hops))
            for h in call.trail.hops:
                if h.code == "spill":
                    m.spills.labels(route, m.engine(h.engine)).inc()
        if d is not None and d.escalated:
            m.escalations.labels(route).inc()
        if call.http_status >= 400:
            m.errors.labels(route, str(call.http_status)).inc()
