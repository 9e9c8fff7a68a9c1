"""Deciding by cross-validation on the route's own labels: which router family (and how strongly
regularised) to fit, and whether the fitted candidate may replace the router serving.

Both decisions read one cross-fit: the labels are split into ``folds`` folds over distinct
prompts, and every label is scored by a model fitted on the other folds (plus the warm-start
rows, if any), so each label judges a model that never saw it.

- **Family** (``family: auto``): each (family, regularisation) of :data:`GRID` is cross-fitted;
  the one with the highest pooled out-of-fold APGR is chosen. Replayed against task sets foreign
  to the starting router, the best family differed by set (a fixed ``hybrid-stats`` reached
  0.534 APGR on one where ``emb-lr`` reached 0.611), so the loop asks its own labels.
- **Promotion** (:func:`gate`): the candidate's out-of-fold scores and the serving router's
  scores are compared on the labels the serving router never trained on, by a paired bootstrap
  over those labels: promoted only when the lower ``confidence`` bound of the APGR difference is
  above ``margin``. The gate it replaces compared one newest quarter once and promoted on noise
  (routers that then scored below the starting router on the replays' test slices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from turnout.evals.datasets import RoutingDataset
from turnout.evals.router_cv import prompt_folds
from turnout.evals.routing_metrics import RouterMetrics, evaluate_scores
from turnout.routing.scorers import make_scorer

AUTO = "auto"
DEFAULT_FOLDS = 5
DEFAULT_CONFIDENCE = 0.9
BOOTSTRAP_ROUNDS = 400
# (family, constructor parameters) that ``family: auto`` cross-validates, cheapest first (a tie
# keeps the earlier). ``c``: inverse L2 strength of the families' logistic regressions. Embedding
# families are tried only where an embedding is available.
GRID: tuple[tuple[str, dict[str, float]], ...] = (
    ("tfidf-lr", {"c": 0.1}), ("tfidf-lr", {"c": 0.3}), ("tfidf-lr", {"c": 1.0}),
    ("emb-lr", {"c": 0.3}), ("emb-lr", {"c": 1.0}), ("emb-lr", {"c": 3.0}),
    ("hybrid-stats", {"c": 0.1}), ("hybrid-stats", {"c": 0.3}),
)


@dataclass(frozen=True)
class Choice:
    """One (family, parameters) and its pooled out-of-fold APGR on the labels."""

    family: str
    params: dict[str, float]
    apgr: float

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))
        return f"{self.family}({args})" if args else self.family


def cross_fit(family: str, params: dict[str, float], data: RoutingDataset, emb: np.ndarray | None,
              warm: RoutingDataset | None = None, warm_emb: np.ndarray | None = None,
              folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold scores of every row of ``data``; each fold's model also learns the warm rows."""
    uses_emb = make_scorer(family, **params).uses_embeddings
    scores = np.full(len(data), np.nan)
    folds = max(2, min(folds, len(set(data.prompts))))
    for train, test in prompt_folds(data.prompts, folds, seed):
        prompts = [data.prompts[i] for i in train]
        weak, strong = data.weak[train], data.strong[train]
        x = emb[train] if (uses_emb and emb is not None) else None
        if warm is not None:
            prompts = list(warm.prompts) + prompts
            weak, strong = np.concatenate([warm.weak, weak]), np.concatenate([warm.strong, strong])
            if x is not None and warm_emb is not None:
                x = np.vstack([warm_emb, x])
        scorer = make_scorer(family, **params)
        scorer.fit(prompts, x, weak, strong)
        scores[test] = scorer.predict([data.prompts[i] for i in test],
                                      emb[test] if (x is not None and emb is not None) else None)
    return scores


def candidates(family: str, with_embeddings: bool) -> list[tuple[str, dict[str, float]]]:
    """What to cross-fit: the :data:`GRID` for ``auto`` (embedding families only ``with_embeddings``),
    else the one family with its default parameters."""
    if family != AUTO:
        return [(family, {})]
    return [(f, p) for f, p in GRID if with_embeddings or not make_scorer(f).uses_embeddings]


def choose(options: Sequence[tuple[str, dict[str, float]]], data: RoutingDataset, emb: np.ndarray | None,
           warm: RoutingDataset | None = None, warm_emb: np.ndarray | None = None, folds: int = DEFAULT_FOLDS,
           seed: int = 0) -> tuple[Choice, np.ndarray, list[Choice]]:
    """The option with the highest pooled out-of-fold APGR, its out-of-fold scores, and every option's."""
    best: tuple[Choice, np.ndarray] | None = None
    tried: list[Choice] = []
    for family, params in options:
        oof = cross_fit(family, params, data, emb, warm, warm_emb, folds, seed)
        apgr = evaluate_scores(oof, data.weak, data.strong).apgr
        choice = Choice(family, dict(params), float(apgr))
        tried.append(choice)
        if best is None or (not np.isnan(apgr) and (np.isnan(best[0].apgr) or apgr > best[0].apgr)):
            best = (choice, oof)
    if best is None:
        raise ValueError("no router family to choose from")
    return best[0], best[1], tried


def bootstrap_differences(candidate: np.ndarray, current: np.ndarray, weak: np.ndarray, strong: np.ndarray,
                          rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> np.ndarray:
    """APGR(candidate) - APGR(current) over ``rounds`` resamples (with replacement) of the same
    labels for both routers; resamples whose models tie on average (no APGR) are dropped."""
    rng = np.random.default_rng(seed)
    n = len(candidate)
    out = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        w, s = weak[idx], strong[idx]
        if float(s.mean()) == float(w.mean()):
            continue
        out.append(evaluate_scores(candidate[idx], w, s).apgr - evaluate_scores(current[idx], w, s).apgr)
    return np.asarray(out, dtype=float)


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    candidate: RouterMetrics
    current: RouterMetrics | None
    difference: float      # APGR difference on the evaluated labels
    lower: float           # its lower ``confidence`` bound (paired bootstrap)
    rows: int


def gate(candidate: np.ndarray, current: np.ndarray | None, weak: np.ndarray, strong: np.ndarray,
         confidence: float = DEFAULT_CONFIDENCE, margin: float = 0.0, rounds: int = BOOTSTRAP_ROUNDS,
         seed: int = 0) -> GateVerdict:
    """Promote only a candidate whose APGR beats the serving router's by more than ``margin`` at the
    lower ``confidence`` bound of a paired bootstrap over these labels (out-of-fold candidate
    scores, and the serving router's scores, on labels it never trained on)."""
    cand_m = evaluate_scores(candidate, weak, strong)
    if current is None:
        return GateVerdict(True, "no router serves yet", cand_m, None, float("nan"), float("nan"), len(candidate))
    cur_m = evaluate_scores(current, weak, strong)
    diff = float(cand_m.apgr - cur_m.apgr)
    diffs = bootstrap_differences(candidate, current, weak, strong, rounds, seed)
    lower = float(np.quantile(diffs, 1.0 - confidence)) if diffs.size else float("nan")
    what = (f"APGR {cand_m.apgr:.3f} vs serving {cur_m.apgr:.3f} on {len(candidate)} labels it never saw "
            f"(difference {diff:+.3f}, {confidence:.0%} lower bound {lower:+.3f})")
    if not np.isnan(lower) and lower > margin and diff > margin:
        return GateVerdict(True, f"better: {what}", cand_m, cur_m, diff, lower, len(candidate))
    return GateVerdict(False, f"not surely better: {what}", cand_m, cur_m, diff, lower, len(candidate))
