"""One server of a pool (``turnout.engines.pool``) as the pool and its balance strategy see it:
its engine (the dialect talking to its url), the gateway's requests in flight there, its health
(ejected after consecutive failures, re-admitted by a probe after a cool-down), whether an
operator is draining it, and what the server itself publishes of its load (queue depth, requests
running, KV-cache use), read by the pool's prober.

States: ``up`` (gets traffic), ``ejected`` (failed; a probe after ``cooldown_s`` re-admits it),
``draining`` (an operator took it out: no new requests, those in flight finish).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from turnout.config_pool import EndpointConfig
from turnout.engines.base import Engine

STALE_PROBES = 3  # server metrics older than this many probe intervals are not used


@dataclass(eq=False, slots=True)
class ServerLoad:
    """What the server published at its last probe (None: not published)."""

    waiting: float | None = None     # requests queued at the server (vllm:num_requests_waiting, ...)
    running: float | None = None     # requests it is working on
    kv_use: float | None = None      # KV-cache use, 0..1
    at: float = 0.0                  # time.monotonic() of the reading


@dataclass(eq=False, slots=True)
class Endpoint:
    cfg: EndpointConfig
    engine: Engine
    name: str = ""
    in_flight: int = 0               # the gateway's requests being answered there
    healthy: bool = True
    draining: bool = False
    failures: int = 0                # consecutive failed requests
    ejected_at: float | None = None
    served: int = 0                  # requests answered (counters for /metrics)
    failed: int = 0
    ejections: int = 0
    readmissions: int = 0
    server: ServerLoad = field(default_factory=ServerLoad)
    fresh_s: float = 6.0             # server metrics younger than this are used (STALE_PROBES x probe interval)

    def __post_init__(self) -> None:
        self.name = self.name or self.cfg.label()

    @property
    def weight(self) -> float:
        return self.cfg.weight

    @property
    def max_concurrency(self) -> int:
        return self.cfg.max_concurrency

    @property
    def state(self) -> str:
        return "draining" if self.draining else "up" if self.healthy else "ejected"

    @property
    def eligible(self) -> bool:
        return self.healthy and not self.draining

    def published(self) -> ServerLoad | None:
        """The server's own load reading when recent enough, else None."""
        s = self.server
        return s if s.at and time.monotonic() - s.at <= self.fresh_s else None

    def load(self) -> float:
        """Outstanding requests: the server's waiting + running where it publishes them (they include
        other clients' and other gateway workers'), never less than the gateway's own in flight."""
        s = self.published()
        if s is None or (s.waiting is None and s.running is None):
            return float(self.in_flight)
        return max(float(self.in_flight), (s.waiting or 0.0) + (s.running or 0.0))

    def kv_use(self) -> float:
        s = self.published()
        return s.kv_use if s is not None and s.kv_use is not None else 0.0

    def full(self) -> bool:
        return self.in_flight >= self.cfg.max_concurrency

    def saturated(self, queue_threshold: int) -> bool:
        """Past its queue threshold: it holds ``max_concurrency`` of the gateway's requests, or its
        server reports ``queue_threshold`` requests waiting."""
        s = self.published()
        return self.full() or (s is not None and s.waiting is not None and s.waiting >= queue_threshold)

    # ==== health =============================================================================
    def succeeded(self) -> None:
        self.failures = 0
        self.served += 1

    def failure(self, eject_after: int, request: bool = True) -> bool:
        """A failed request (or, ``request`` false, a failed probe); True when it ejected the endpoint."""
        self.failed += int(request)
        self.failures += 1
        if self.healthy and self.failures >= eject_after:
            self.eject()
            return True
        return False

    def eject(self) -> None:
        if self.healthy:
            self.ejections += 1
        self.healthy, self.ejected_at = False, time.monotonic()

    def readmit(self) -> None:
        self.healthy, self.ejected_at, self.failures = True, None, 0
        self.readmissions += 1

    def cooled(self, cooldown_s: float) -> bool:
        return self.ejected_at is None or time.monotonic() - self.ejected_at >= cooldown_s
