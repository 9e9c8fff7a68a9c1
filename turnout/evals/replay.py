"""Replay an outcome data set as live traffic through the learning loop, and watch the router learn.

    turnout eval router --replay gsm8k --artifact .turnout/routers/mmlu-tfidf-lr.npz --router hybrid-stats
    python bench/router_replay.py --source mmlu --target gsm8k       # both samplings, several seeds

Each prompt of the data set is a request. The serving router (at first the artifact, trained on
another data set) scores it; the tracked threshold (:mod:`turnout.routing.threshold`) sends the
configured share to the strong engine. Of the weak-answered requests of each period (``batch``
requests, a "day"), a share is shadowed to the strong engine (:mod:`turnout.routing.shadow`'s
sampler: uniformly, or nearest the threshold first with a little uniform exploration) within the
label budget, and a judge that reads the data set's outcomes labels the pair (the loopback
engines answer right or wrong as the labels say). Every ``retrain_every`` labels the router is
refitted from the labels (``family: auto``: the family chosen by cross-validation on them) and
promoted only through the gate of :mod:`turnout.evals.retrain` (an APGR gain whose lower bound,
paired bootstrap over the labels the serving router never saw, is above zero; scores that spread).

Reported against the number of labels: APGR and CPT(50%) of the serving router on a test slice
of the data set that the loop never sees (one fold of five over distinct prompts), its PGR at the
configured escalation share (the operating point it serves at, where uncertainty sampling spends
its labels; APGR averages over every share), and the labelling cost (shadow calls to the strong
engine; in USD when the data has costs).
Everything runs in-process for speed; ``tests/test_learning_loop.py`` runs the same pieces over
real sockets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from turnout.evals.datasets import RoutingDataset
from turnout.evals.retrain import label_times, retrain, traffic_dataset
from turnout.evals.router_cv import prompt_folds
from turnout.evals.routing_metrics import evaluate_scores, pgr_at
from turnout.evals.selection import DEFAULT_CONFIDENCE
from turnout.routing.learned import LearnedRouter
from turnout.routing.shadow import pick_for_shadow
from turnout.routing.threshold import ThresholdTracker

EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass
class ReplayConfig:
    family: str = "auto"                # a family, or auto: chosen by cross-validation on the labels
    sampling: str = "uniform"           # uniform | uncertainty (docs/routing-eval.md: uniform learns faster)
    label_budget: int = 1000
    shadow_share: float = 0.25          # share of a period's weak-answered requests shadowed
    batch: int = 200                    # requests per period
    retrain_every: int = 100            # labels between refits
    target_escalation: float = 0.2
    explore: float = 0.2                # uncertainty sampling: share of picks drawn uniformly
    confidence: float = DEFAULT_CONFIDENCE  # the promotion gate's bound (0.5: promote on the point estimate)
    test_fold: int = 0                  # which of 5 folds is the untouched test slice
    seed: int = 0
    max_requests: int = 50_000


@dataclass
class CurvePoint:
    labels: int
    requests: int
    shadow_calls: int
    label_cost_usd: float
    serving: str
    apgr: float
    cpt50: float
    pgr_at_target: float            # PGR with the configured share of the test prompts sent strong
    escalation_share: float
    promotions: int
    refusals: int


@dataclass
class ReplayResult:
    source: str
    target: str
    config: ReplayConfig
    curve: list[CurvePoint] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def labels_to_reach(self, apgr: float) -> int | None:
        for p in self.curve:
            if p.apgr >= apgr:
                return p.labels
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "config": asdict(self.config),
                "curve": [asdict(p) for p in self.curve], "events": self.events}


def embed_lookup(prompts: list[str], emb: np.ndarray) -> EmbedFn:
    """Embeddings of known prompts by lookup (the replayed data set's, computed once)."""
    index = {p: i for i, p in enumerate(prompts)}

    def embed(texts: list[str]) -> np.ndarray:
        return emb[[index[t] for t in texts]]

    return embed


def _scores(router: LearnedRouter, prompts: list[str], embed: EmbedFn | None) -> np.ndarray:
    if router.scorer.uses_embeddings:
        if embed is None:
            return router.score_batch(prompts)
        return router.scorer.predict(prompts, embed(prompts))
    return router.scorer.predict(prompts, None)


def replay(target: RoutingDataset, initial: LearnedRouter, cfg: ReplayConfig, embed: EmbedFn | None = None,
           source: str = "artifact", progress: Callable[[str], None] | None = None) -> ReplayResult:
    rng = np.random.default_rng(cfg.seed)
    train_rows, test_rows = prompt_folds(target.prompts, 5, cfg.seed)[cfg.test_fold]
    test = target.subset(test_rows)
    pool = np.asarray(train_rows)
    result = ReplayResult(source=source, target=target.name, config=cfg)
    serving, name = initial, "initial"
    tracker = ThresholdTracker(window=1000, min_samples=50)
    tracker.configure("route", cfg.target_escalation, initial.threshold)
    recent: list[int] = []  # rows of the last requests, to seed the threshold of a promoted router
    labelled: set[str] = set()
    label_rows: list[dict[str, Any]] = []
    cost = 0.0
    shadow_calls = promotions = refusals = requests = 0
    since_fit = 0

    def point() -> None:
        s = _scores(serving, list(test.prompts), embed)
        m = evaluate_scores(s, test.weak, test.strong)
        result.curve.append(CurvePoint(len(label_rows), requests, shadow_calls, cost, name, m.apgr, m.cpt50,
                                       pgr_at(s, test.weak, test.strong, cfg.target_escalation),
                                       float((s >= tracker.threshold("route")).mean()), promotions, refusals))
        if progress:
            progress(f"{len(label_rows):5d} labels  APGR {m.apgr:.3f}  CPT50 {m.cpt50 * 100:5.1f}%  ({name})")

    point()
    order = rng.permutation(pool)
    cursor = 0
    idle_passes, labels_at_pass = 0, 0
    while len(label_rows) < cfg.label_budget and requests < cfg.max_requests:
        if cursor >= len(order):
            order, cursor = rng.permutation(pool), 0
            idle_passes = idle_passes + 1 if len(label_rows) == labels_at_pass else 0
            labels_at_pass = len(label_rows)
            if idle_passes >= 3:  # what is left is never answered by the weak engine: no shadow label
                result.events.append(f"stopped: 3 passes over the traffic without a new label "
                                     f"({len(labelled)} of {len(pool)} prompts labelled)")
                break
        batch = order[cursor:cursor + cfg.batch]
        cursor += len(batch)
        prompts = [target.prompts[i] for i in batch]
        recent = (recent + [int(i) for i in batch])[-tracker.window:]
        scores = _scores(serving, prompts, embed)
        weak_answered: list[tuple[int, float, float]] = []  # (row, score, threshold at decision)
        for row, s in zip(batch, scores, strict=True):
            t = tracker.threshold("route")
            tracker.observe("route", float(s))
            requests += 1
            if s < t and target.prompts[row] not in labelled:
                weak_answered.append((int(row), float(s), t))
        n = min(int(round(cfg.shadow_share * len(weak_answered))) if weak_answered else 0,
                cfg.label_budget - len(label_rows))
        picked = pick_for_shadow([(s, t) for _, s, t in weak_answered], n, cfg.sampling, cfg.explore, rng)
        for k in picked:
            row = weak_answered[k][0]
            labelled.add(target.prompts[row])
            shadow_calls += 1
            cost += float(target.strong_cost[row]) if target.strong_cost is not None else 0.0
            label_rows.append({"prompt": target.prompts[row], "weak_score": float(target.weak[row]),
                               "strong_score": float(target.strong[row]), "source": "replay",
                               "ts": float(len(label_rows) + 1)})
            since_fit += 1
        if since_fit >= cfg.retrain_every or (len(label_rows) >= cfg.label_budget and since_fit):
            since_fit = 0
            outcome = retrain(traffic_dataset(label_rows, "traffic"), serving, cfg.family, cfg.target_escalation,
                              embed, "replay", times=label_times(label_rows), confidence=cfg.confidence)
            if outcome.promote and outcome.candidate is not None:
                promotions += 1
                serving, name = outcome.candidate, f"r{promotions:04d}"
                seed = _scores(serving, [target.prompts[i] for i in recent], embed)
                tracker.configure("route", cfg.target_escalation, serving.threshold, [float(x) for x in seed])
                result.events.append(f"{len(label_rows)} labels: promoted {name}: {outcome.reason}")
            else:
                refusals += 1
                result.events.append(f"{len(label_rows)} labels: refused: {outcome.reason}")
            point()
    return result


def render(result: ReplayResult) -> str:
    lines = [f"replay {result.target} from a router trained on {result.source} "
             f"(family {result.config.family}, {result.config.sampling} sampling, seed {result.config.seed})",
             f"{'labels':>6} {'requests':>8} {'shadow':>6} {'APGR':>6} {'CPT50':>6} {'PGR@t':>6} {'strong%':>7}"
             "  serving"]
    for p in result.curve:
        cpt = "-" if math.isnan(p.cpt50) else f"{p.cpt50 * 100:.1f}"
        lines.append(f"{p.labels:>6} {p.requests:>8} {p.shadow_calls:>6} {p.apgr:>6.3f} {cpt:>6} "
                     f"{p.pgr_at_target:>6.3f} "
                     f"{p.escalation_share * 100:>6.1f}%  {p.serving}")
    return "\n".join(lines)
