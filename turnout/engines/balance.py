"""How a pool (``turnout.engines.pool``) picks the endpoint of a request: the ``balance`` of an
engine entry, a name registered in the ``turnout.balancers`` entry-point group (``turnout.plugins``),
so a plugin adds its own exactly as the built-ins are registered.

    round_robin        smooth weighted round-robin (nginx's): each endpoint in turn, in proportion
                       to its weight. Blind to load and to what an endpoint has cached.
    least_outstanding  the endpoint with the fewest outstanding requests per unit of weight (the
                       server's own count where it publishes one). Follows load; blind to caches.
    p2c                power of two choices: two endpoints drawn by weight, the less loaded of the
                       two. Near least-outstanding, with no herd onto one endpoint when load
                       readings are stale (several gateway workers, metrics read every few seconds).
    prefix             ``turnout.engines.prefix``: where the conversation's prefix is cached,
                       unless that endpoint is overloaded; else the least loaded.

A strategy sees only the endpoints that may take the request now (up, not draining, not
saturated when others are not); it never waits or fails. ``placed`` tells it where a request
went (a prefix strategy records the prefix there); ``forget`` that an endpoint lost its cache
(ejected: the server may have restarted).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from turnout import plugins
from turnout.engines.endpoint import Endpoint
from turnout.protocol import ChatRequest


class Balancer(ABC):
    name: ClassVar[str]

    def __init__(self, options: Mapping[str, Any]) -> None:
        """``options``: the engine's ``pool.options`` (the strategy's own settings)."""
        self.options = dict(options)

    @abstractmethod
    def pick(self, req: ChatRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        """One of ``candidates`` (never empty) for ``req``."""

    def placed(self, req: ChatRequest, endpoint: Endpoint) -> None:
        """``req`` was sent to ``endpoint``."""

    def forget(self, endpoint: Endpoint) -> None:
        """``endpoint`` lost what it had cached (ejected, restarted)."""


def balancer_class(name: str) -> type[Balancer]:
    found = plugins.load(plugins.BALANCERS, name)
    if not (isinstance(found, type) and issubclass(found, Balancer)):
        raise plugins.PluginError(f"balance strategy {name!r}: {found!r} is not a Balancer class")
    return found


class RoundRobin(Balancer):
    name = "round_robin"

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.current: dict[str, float] = {}

    def pick(self, req: ChatRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        total = 0.0
        best: Endpoint | None = None
        for e in candidates:
            self.current[e.name] = self.current.get(e.name, 0.0) + e.weight
            total += e.weight
            if best is None or self.current[e.name] > self.current[best.name]:
                best = e
        assert best is not None
        self.current[best.name] -= total
        return best


class LeastOutstanding(Balancer):
    name = "least_outstanding"

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.turn = 0

    def pick(self, req: ChatRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        self.turn += 1  # ties go round, not always to the first endpoint
        n = len(candidates)
        return min((candidates[(self.turn + i) % n] for i in range(n)), key=lambda e: e.load() / e.weight)


class PowerOfTwo(Balancer):
    name = "p2c"

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.rng = random.Random(options.get("seed"))

    def pick(self, req: ChatRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        if len(candidates) == 1:
            return candidates[0]
        a = self.rng.choices(candidates, weights=[e.weight for e in candidates])[0]
        rest = [e for e in candidates if e is not a]
        b = self.rng.choices(rest, weights=[e.weight for e in rest])[0]
        return a if a.load() / a.weight <= b.load() / b.weight else b
