"""When to hedge a stream: a fixed delay, or the p95 of the first engine's recent times to
first token. One ``Hedge`` per route, kept by the route's strategy for the gateway's lifetime
(the TTFT window must outlive a request); ``FallbackEngine`` asks it for the delay and reports
each TTFT."""

from __future__ import annotations

from collections import deque

from turnout.config import HedgeConfig


class Hedge:
    def __init__(self, cfg: HedgeConfig) -> None:
        self.cfg = cfg
        self._ttft: dict[str, deque[float]] = {}

    def delay(self, engine: str) -> float:
        """Seconds to wait for ``engine``'s first token before starting the next engine."""
        cfg = self.cfg
        if not isinstance(cfg.after, str):
            return max(cfg.floor, cfg.after)
        seen = sorted(self._ttft.get(engine, ()))
        if len(seen) < cfg.min_samples:
            return max(cfg.floor, cfg.initial)
        return max(cfg.floor, seen[min(len(seen) - 1, int(0.95 * len(seen)))])

    def observe(self, engine: str, seconds: float) -> None:
        self._ttft.setdefault(engine, deque(maxlen=self.cfg.window)).append(seconds)
