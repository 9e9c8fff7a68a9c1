"""When to hedge a stream: a fixed delay, or the p95 of the first engine's recent times to
first token. One ``Hedge`` per route, kept by the route's strategy for the gateway's lifetime
(the TTFT window must outlive a request); ``FallbackEngine`` asks it for the delay and reports
each TTFT."""

from __future__ import annotations

from turnout.config import HedgeConfig
from turnout.engines.deadline import Window


class Hedge:
    def __init__(self, cfg: HedgeConfig) -> None:
        self.cfg = cfg
        self._ttft: dict[str, Window] = {}

    def delay(self, engine: str) -> float:
        """Seconds to wait for ``engine``'s first token before starting the next engine."""
        cfg = self.cfg
        if not isinstance(cfg.after, str):
            return max(cfg.floor, cfg.after)
        seen = self._ttft.get(engine)
        p95 = seen.p95() if seen is not None and len(seen) >= cfg.min_samples else None
        return max(cfg.floor, cfg.initial if p95 is None else p95)

    def observe(self, engine: str, seconds: float) -> None:
        self._ttft.setdefault(engine, Window(self.cfg.window)).observe(seconds)
