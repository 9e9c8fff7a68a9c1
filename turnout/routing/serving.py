"""What a ``learned`` route decides per request: the router's score against the tracked threshold,
or, when the router is missing, broken or fails on this prompt, the route's rules, visibly.

    serving = LearnedServing.from_routes({"auto": (".turnout/routers/auto", 0.2, None)})  # start-up
    verdict = await asyncio.to_thread(serving.decide, "auto", prompt_text)
    if verdict.escalate is None: ...   # rules: the chain in order; verdict.reason says why
    elif verdict.escalate: ...         # strong engines first

A router never fails a request: :meth:`LearnedServing.decide` returns ``escalate=None`` with the
reason instead of raising. The threshold served is :class:`~turnout.routing.threshold.ThresholdTracker`'s
when the route has a target share, else the configured or the artifact's fixed threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from turnout.routing.artifacts import load_serving
from turnout.routing.learned import LearnedRouter
from turnout.routing.threshold import ThresholdTracker

log = logging.getLogger("turnout.routing")


@dataclass(frozen=True)
class ServingVerdict:
    escalate: bool | None   # None: no usable router, route by the rules
    score: float | None
    threshold: float | None
    reason: str


class LearnedServing:
    """Per route: the loaded router (or why there is none), a fixed threshold or a tracked share."""

    def __init__(self, routers: Mapping[str, LearnedRouter | None], problems: Mapping[str, str] | None = None,
                 targets: Mapping[str, float] | None = None, thresholds: Mapping[str, float | None] | None = None,
                 tracker: ThresholdTracker | None = None) -> None:
        self.routers = dict(routers)
        self.problems = dict(problems or {})
        self.thresholds = dict(thresholds or {})
        self.tracker = tracker or ThresholdTracker()
        for alias, target in (targets or {}).items():
            router = self.routers.get(alias)
            if router is not None:
                self.tracker.configure(alias, target, self._fixed(alias, router))

    @classmethod
    def from_routes(cls, routes: Mapping[str, tuple[str | Path, float | None, float | None]],
                    warm_up: bool = True) -> LearnedServing:
        """``routes``: alias -> (artifact file or registry folder, target share or None, fixed threshold or None)."""
        routers: dict[str, LearnedRouter | None] = {}
        problems: dict[str, str] = {}
        for alias, (path, _, _) in routes.items():
            routers[alias], why = load_serving(path, warm_up)
            if why:
                problems[alias] = why
        return cls(routers, problems, {a: t for a, (_, t, _) in routes.items() if t is not None},
                   {a: th for a, (_, _, th) in routes.items()})

    def _fixed(self, alias: str, router: LearnedRouter) -> float:
        configured = self.thresholds.get(alias)
        return configured if configured is not None else router.threshold

    def decide(self, alias: str, prompt: str) -> ServingVerdict:
        router = self.routers.get(alias)
        if router is None:
            return ServingVerdict(None, None, None, self.problems.get(alias, f"no router for route {alias!r}")
                                  + "; routed by the chain's rules")
        try:
            score = router.score(prompt)
        except Exception as exc:  # noqa: BLE001 - a router never fails a request
            log.error("learned router of route %s failed on a prompt: %s", alias, exc)
            return ServingVerdict(None, None, None, f"learned router failed ({type(exc).__name__}: {exc}); "
                                  "routed by the chain's rules")
        threshold = self.tracker.threshold(alias, default=self._fixed(alias, router))
        self.tracker.observe(alias, score)
        escalate = score >= threshold
        word = ">=" if escalate else "<"
        tracked = " (tracked)" if self.tracker.tracks(alias) else ""
        return ServingVerdict(escalate, score, threshold,
                              f"learned router: {score:.3f} {word} {threshold:.3f}{tracked}, "
                              f"{'strong' if escalate else 'weak'} engine")

    def replace(self, alias: str, router: LearnedRouter, target: float | None = None,
                seed_scores: list[float] | None = None) -> None:
        """Serve a newly promoted artifact (a reload or the retraining schedule); ``seed_scores``:
        its scores of recent requests, so the tracked threshold fits it from the first request."""
        self.routers[alias] = router
        self.problems.pop(alias, None)
        if target is not None:
            self.tracker.configure(alias, target, self._fixed(alias, router), seed_scores)
