"""The serving threshold of a learned route, tracked on live traffic (a streaming quantile).

A router's threshold is calibrated once, as the ``1 - r`` quantile of its scores on its training
data, to send a share ``r`` of prompts to the strong engine (RouteLLM's ``calibrate_threshold``).
On traffic unlike that data the promise breaks: a router calibrated on one set to send 20 % sent
5 %, 39 % and 100 % on three foreign sets. The tracker keeps the last ``window`` scores of each
route and serves their ``1 - r`` quantile instead, so the share of strong calls holds on the
traffic the router actually sees. Until ``min_samples`` scores arrived it serves the artifact's
threshold. How far the served threshold moved from the artifact's (the drift) is reported by
:meth:`ThresholdTracker.snapshot` for ``/metrics`` and ``turnout usage``.

Usage (the learned strategy, per request)::

    t = tracker.threshold(alias)       # instead of the artifact's fixed threshold
    tracker.observe(alias, score)      # after scoring the prompt

The window quantile is exact over the window (``numpy.quantile``), recomputed every ``every``
observations; a window of 1,000 scores costs about 20 microseconds per recomputation.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW = 1000
DEFAULT_MIN_SAMPLES = 50
DEFAULT_EVERY = 10


@dataclass(frozen=True)
class ThresholdState:
    """One route's tracking, as reported in metrics."""

    target: float              # configured share of strong calls
    artifact_threshold: float  # the threshold the artifact was calibrated with
    threshold: float           # the threshold served now
    samples: int               # scores in the window
    escalation_share: float    # share of the window's scores at or above the artifact's threshold
    served_share: float        # share of the window's decisions that escalated (served threshold)


class _Route:
    def __init__(self, target: float, initial: float, window: int) -> None:
        self.target, self.initial = target, initial
        self.scores: deque[float] = deque(maxlen=window)
        self.served: deque[bool] = deque(maxlen=window)
        self.current = initial
        self.pending = 0


class ThresholdTracker:
    """Per-route streaming quantile of recent router scores; thread-safe."""

    def __init__(self, window: int = DEFAULT_WINDOW, min_samples: int = DEFAULT_MIN_SAMPLES,
                 every: int = DEFAULT_EVERY) -> None:
        if window < 1 or min_samples < 1 or every < 1:
            raise ValueError("window, min_samples and every must be positive")
        self.window, self.min_samples, self.every = window, min(min_samples, window), every
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()

    def configure(self, alias: str, target: float, artifact_threshold: float,
                  seed_scores: Sequence[float] | None = None) -> None:
        """Track ``alias`` to send a share ``target`` (0..1) of its requests to the strong engine.
        A new artifact (another threshold) or target starts the route's window afresh, from
        ``seed_scores`` when given: the new router's scores of recent requests, so that its first
        requests are not served at a threshold calibrated on other prompts."""
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target escalation share must be in [0, 1], got {target}")
        with self._lock:
            old = self._routes.get(alias)
            if old is not None and old.target == target and old.initial == artifact_threshold and not seed_scores:
                return
            route = _Route(float(target), float(artifact_threshold), self.window)
            route.scores.extend(float(s) for s in (seed_scores or ())[-self.window:])
            if len(route.scores) >= self.min_samples:
                route.current = float(np.quantile(np.fromiter(route.scores, float), 1.0 - target))
            self._routes[alias] = route

    def tracks(self, alias: str) -> bool:
        return alias in self._routes

    def threshold(self, alias: str, default: float | None = None) -> float:
        """The threshold to serve for ``alias`` now (``default`` for a route not configured)."""
        route = self._routes.get(alias)
        if route is None:
            if default is None:
                raise KeyError(f"route {alias!r} is not tracked")
            return default
        return route.current

    def observe(self, alias: str, score: float) -> None:
        """Record one scored request of ``alias`` (ignored for a route not configured)."""
        route = self._routes.get(alias)
        if route is None:
            return
        with self._lock:
            route.served.append(score >= route.current)
            route.scores.append(float(score))
            route.pending += 1
            if len(route.scores) >= self.min_samples and (route.pending >= self.every
                                                          or len(route.scores) == self.min_samples):
                route.pending = 0
                route.current = float(np.quantile(np.fromiter(route.scores, float), 1.0 - route.target))

    def snapshot(self) -> dict[str, ThresholdState]:
        out: dict[str, ThresholdState] = {}
        with self._lock:
            for alias, r in self._routes.items():
                scores = np.fromiter(r.scores, float)
                out[alias] = ThresholdState(
                    target=r.target, artifact_threshold=r.initial, threshold=r.current, samples=len(scores),
                    escalation_share=float((scores >= r.initial).mean()) if len(scores) else float("nan"),
                    served_share=float(np.mean(np.fromiter(r.served, bool))) if r.served else float("nan"))
        return out
