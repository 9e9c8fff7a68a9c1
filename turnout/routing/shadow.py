"""Shadow evaluation: label live traffic by also asking the strong engine, off the response path.

A configurable share of the requests a learned route answered with its weak engine is sent to
the strong engine in the background, after the client has its answer; a judge
(:mod:`turnout.routing.judge`) compares the two answers and the label goes to the store
(:mod:`turnout.ledger.labels`). Rules:

- only requests that may go remote: never one the guards marked ``sensitive``/``restricted``
  (kept local); the prompt stored and sent is the pseudonymized copy (:func:`labelable_prompt`);
- a budget in USD per UTC day caps the shadow calls' cost (estimated before, counted after);
- which requests: by default any weak-answered request alike (``sampling="uniform"``); with
  ``sampling="uncertainty"`` the prompts scored nearest the threshold first
  (:class:`ShadowSampler`), with a share drawn uniformly so the labels still cover the whole
  range. Uniform is the default because it learned as fast or faster in every replay
  (docs/routing-eval.md): the labels are noisy 0/1 outcomes, one near the threshold tells little
  more than any other, and a sample bunched in one score band biases the refit and the gate.

``turnout.learning.LearningLoop.after`` calls, after the answer was recorded::

    shadow.maybe_schedule(tenant=..., alias=..., request_id=..., prompt=labelable_prompt(req, guard_state),
                          request=req.model_dump(), weak_engine=..., strong_engine=..., weak_answer=text,
                          score=d.score, threshold=d.threshold, estimated_cost=...,
                          call_strong=lambda: strong_answer(engine, protected_req))

and, when a cascade escalates, ``await labels.add(cascade_label(...))``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from turnout.ledger.labels import Label
from turnout.routing.judge import Judge

log = logging.getLogger("turnout.routing.shadow")
SAMPLINGS = ("uniform", "uncertainty")


def pick_for_shadow(candidates: Sequence[tuple[float, float]], n: int, sampling: str, explore: float,
                    rng: np.random.Generator) -> list[int]:
    """Indices of ``n`` of the (score, threshold) ``candidates`` to label: uniformly, or nearest the
    threshold first with ``explore`` of them drawn uniformly from the rest."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    n = max(0, min(n, len(candidates)))
    if n == 0:
        return []
    if sampling == "uniform":
        return [int(i) for i in rng.choice(len(candidates), size=n, replace=False)]
    distance = np.array([abs(t - s) for s, t in candidates])
    n_explore = int(round(explore * n))
    nearest = [int(i) for i in np.argsort(distance, kind="stable")[: n - n_explore]]
    rest = np.setdiff1d(np.arange(len(candidates)), nearest)
    extra = [int(i) for i in rng.choice(rest, size=min(n_explore, len(rest)), replace=False)] if n_explore else []
    return nearest + extra


class ShadowSampler:
    """Per-request decision for a stream: shadow about ``share`` of the candidates, nearest the
    threshold first. A candidate whose distance to the threshold is among the smallest
    ``share * (1 - explore)`` of the recent ``window`` distances is picked; any candidate also with
    probability ``share * explore``. Until ``warm`` distances were seen, uniformly at ``share``."""

    def __init__(self, share: float, sampling: str = "uniform", explore: float = 0.2, window: int = 500,
                 warm: int = 20, seed: int | None = None) -> None:
        if not 0.0 <= share <= 1.0 or not 0.0 <= explore <= 1.0:
            raise ValueError("share and explore must be in [0, 1]")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.share, self.sampling, self.explore, self.warm = share, sampling, explore, warm
        self.distances: deque[float] = deque(maxlen=window)
        self.rng = np.random.default_rng(seed)

    def decide(self, score: float, threshold: float) -> bool:
        d = abs(threshold - score)
        recent = np.fromiter(self.distances, float)
        self.distances.append(d)
        if self.sampling == "uniform" or len(recent) < self.warm:
            return bool(self.rng.random() < self.share)
        if self.rng.random() < self.share * self.explore:
            return True
        return bool((recent < d).mean() < self.share * (1.0 - self.explore))


def labelable_prompt(prompt: str, protected_prompt: str | None, safe_for_remote: bool) -> str | None:
    """The text a label may store: the pseudonymized copy when the guards made one, the prompt
    when nothing needed replacing, None when the request may not leave local engines."""
    if not safe_for_remote:
        return None
    return protected_prompt if protected_prompt is not None else prompt


def cascade_label(*, tenant: str, alias: str, prompt: str, weak_engine: str, strong_engine: str,
                  request_id: str | None, why: str = "confidence") -> Label:
    """A cascade escalated: the weak answer was judged not good enough, the strong one exists."""
    return Label(tenant, alias, prompt, weak_engine, strong_engine, "cascade", f"cascade:{why}", 0.0, None,
                 request_id)


def feedback_label(*, tenant: str, alias: str, prompt: str, engine: str, weak_engine: str, strong_engine: str,
                   satisfaction: float, request_id: str | None) -> Label:
    """The user's rating of one engine's answer, as a label for that engine's side."""
    weak = satisfaction if engine == weak_engine else None
    strong = satisfaction if engine != weak_engine else None
    return Label(tenant, alias, prompt, weak_engine, strong_engine, "feedback", "user", weak, strong, request_id)


class LabelStore(Protocol):
    async def add(self, label: Label) -> None: ...


@dataclass
class ShadowPolicy:
    share: float = 0.05                 # of weak-answered requests
    daily_budget_usd: float = 1.0
    sampling: str = "uniform"
    explore: float = 0.2


@dataclass
class ShadowStats:
    """Counts per route, for ``/metrics`` and ``turnout usage``: the share spent on labelling."""

    considered: dict[str, int] = field(default_factory=dict)
    scheduled: dict[str, int] = field(default_factory=dict)
    labelled: dict[str, int] = field(default_factory=dict)
    agreed: dict[str, int] = field(default_factory=dict)    # weak as good as strong
    failed: dict[str, int] = field(default_factory=dict)
    over_budget: dict[str, int] = field(default_factory=dict)
    spent_usd: float = 0.0
    day: str = ""
    tenants: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (route, tenant, result) -> count
    spent_by_tenant: dict[str, float] = field(default_factory=dict)        # today, what the calls cost

    @staticmethod
    def bump(counter: dict[str, int], alias: str) -> None:
        counter[alias] = counter.get(alias, 0) + 1

    def count(self, result: str, alias: str, tenant: str) -> None:
        """One more ``result`` (a field above) for ``alias``, and for it of ``tenant``."""
        self.bump(getattr(self, result), alias)
        key = (alias, tenant, result)
        self.tenants[key] = self.tenants.get(key, 0) + 1


StrongCall = Callable[[], Awaitable[tuple[str, float]]]  # -> (strong answer text, its cost in USD)
# after a label is stored: (the strong answer, the judge's name, weak score, strong score) -> kept elsewhere (capture)
AfterLabel = Callable[[str, str, "float | None", "float | None"], Awaitable[object]]


class Shadow:
    """Schedules shadow calls in the background and records their labels."""

    def __init__(self, store: LabelStore, judge: Judge, policies: Mapping[str, ShadowPolicy],
                 clock: Callable[[], float] = time.time, seed: int | None = None) -> None:
        self.store, self.judge, self.policies, self.clock = store, judge, dict(policies), clock
        self.samplers = {a: ShadowSampler(p.share, p.sampling, p.explore, seed=seed) for a, p in self.policies.items()}
        self.stats = ShadowStats()
        self._tasks: set[asyncio.Task[None]] = set()

    def _today(self) -> str:
        day = dt.datetime.fromtimestamp(self.clock(), dt.UTC).date().isoformat()
        if day != self.stats.day:
            self.stats.day, self.stats.spent_usd = day, 0.0
            self.stats.spent_by_tenant.clear()
        return day

    def maybe_schedule(self, *, tenant: str, alias: str, request_id: str | None, prompt: str | None,
                       request: Mapping[str, Any] | None, weak_engine: str, strong_engine: str, weak_answer: str,
                       score: float, threshold: float, estimated_cost: float, call_strong: StrongCall,
                       after: AfterLabel | None = None) -> bool:
        """Off the response path: True when a shadow call was scheduled for this request."""
        policy = self.policies.get(alias)
        if policy is None or prompt is None:
            return False
        s = self.stats
        s.count("considered", alias, tenant)
        if not self.samplers[alias].decide(score, threshold):
            return False
        self._today()
        budget = self.policies[alias].daily_budget_usd
        if s.spent_usd + estimated_cost > budget:
            s.count("over_budget", alias, tenant)
            return False
        s.spent_usd += estimated_cost  # reserved now, corrected when the call's cost is known
        s.count("scheduled", alias, tenant)
        task = asyncio.get_running_loop().create_task(self._run(
            tenant, alias, request_id, prompt, request, weak_engine, strong_engine, weak_answer, estimated_cost,
            call_strong, after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, tenant: str, alias: str, request_id: str | None, prompt: str,
                   request: Mapping[str, Any] | None, weak_engine: str, strong_engine: str, weak_answer: str,
                   estimated: float, call_strong: StrongCall, after: AfterLabel | None = None) -> None:
        s = self.stats
        try:
            strong_answer, cost = await call_strong()
            s.spent_usd += cost - estimated
            s.spent_by_tenant[tenant] = s.spent_by_tenant.get(tenant, 0.0) + cost
            verdict = await self.judge.judge(prompt, weak_answer, strong_answer, request)
            if verdict is None:
                s.count("failed", alias, tenant)
                return
            await self.store.add(Label(tenant, alias, prompt, weak_engine, strong_engine, "shadow", verdict.judge,
                                       verdict.weak_score, verdict.strong_score, request_id, cost))
            s.count("labelled", alias, tenant)
            if after is not None:
                await after(strong_answer, verdict.judge, verdict.weak_score, verdict.strong_score)
            if verdict.weak_score is not None and verdict.weak_score >= (verdict.strong_score or 0.0):
                s.count("agreed", alias, tenant)
        except Exception as exc:  # noqa: BLE001 - a shadow call never affects the user's request
            s.count("failed", alias, tenant)
            log.warning("shadow call for route %s failed: %s", alias, exc)

    async def drain(self) -> None:
        """Wait for the shadow calls in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
