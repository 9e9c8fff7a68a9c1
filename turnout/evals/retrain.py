"""Retraining a route's router from its traffic labels, behind a promotion gate.

    rows = labels.rows(alias)                          # turnout.ledger.labels
    data = traffic_dataset(rows, alias)                # prompt, weak and strong outcome per label
    result = retrain(data, current, family="tfidf-lr", target_escalation=0.2)
    if result.promote: registry.promote(...)           # turnout.routing.artifacts

The newest ``holdout`` share of labels (by time, whole prompts) is held out; the candidate is
fitted on the older labels (optionally with a public data set added, the warm start) and both the
candidate and the current router are scored on the held-out slice. The candidate is promoted only
if its APGR is higher and its CPT(50%) no higher than the current router's there, and only if its
scores spread (:func:`turnout.routing.learned.check_spread`). Its threshold is the ``1 - r``
quantile of its scores on the held-out prompts: recent traffic, the population it will serve.
Provenance (label counts by source, data sha256, date, metrics of both) goes into the artifact.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turnout.evals.datasets import RoutingDataset
from turnout.evals.routing_metrics import RouterMetrics, evaluate_scores
from turnout.ledger.labels import counts_by_source
from turnout.routing.learned import (
    DegenerateRouter,
    LearnedRouter,
    check_spread,
    data_fingerprint,
    embedding_metadata,
    features_of,
)
from turnout.routing.scorers import make_scorer

EmbedFn = Callable[[list[str]], np.ndarray]
MIN_LABELS = 40        # below this a held-out slice says nothing
DEFAULT_HOLDOUT = 0.25


def traffic_dataset(rows: Sequence[dict[str, Any]], name: str = "traffic") -> RoutingDataset:
    """Label rows (oldest first) as outcome data. A label that knows one engine's outcome only
    (user feedback on the weak answer, a pairwise judge) takes the other as 1.0 (good): the row
    then says whether the weak answer sufficed, which is what the router ranks by. Of several
    feedback labels on one request only the last counts (a later feedback replaces the earlier)."""
    last_feedback = {str(r["request_id"]): i for i, r in enumerate(rows)
                     if r["source"] == "feedback" and r.get("request_id")}
    prompts, weak, strong, groups = [], [], [], []
    for i, r in enumerate(rows):
        if r["source"] == "feedback" and r.get("request_id") and last_feedback[str(r["request_id"])] != i:
            continue
        prompts.append(str(r["prompt"]))
        weak.append(1.0 if r["weak_score"] is None else float(r["weak_score"]))
        strong.append(1.0 if r["strong_score"] is None else float(r["strong_score"]))
        groups.append(str(r["source"]))
    return RoutingDataset(name=name, prompts=prompts, weak=np.asarray(weak, float), strong=np.asarray(strong, float),
                          groups=groups, source="route_labels")


def recent_split(data: RoutingDataset, holdout: float = DEFAULT_HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) row indices: the newest ``holdout`` share of distinct prompts is held out,
    and every row of a held-out prompt with it (rows are oldest first)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    seen: dict[str, int] = {}
    for i, p in enumerate(data.prompts):
        seen[p] = i  # last appearance
    order = sorted(seen, key=seen.__getitem__)
    held = set(order[len(order) - max(1, int(round(holdout * len(order)))):])
    rows = np.arange(len(data))
    mask = np.array([p in held for p in data.prompts])
    return rows[~mask], rows[mask]


@dataclass
class Outcome:
    """What the gate decided, and everything needed to record it."""

    promote: bool
    reason: str
    candidate: LearnedRouter | None
    candidate_metrics: RouterMetrics | None
    current_metrics: RouterMetrics | None
    provenance: dict[str, Any] = field(default_factory=dict)


def _cpt(m: RouterMetrics) -> float:
    return 1.0 if math.isnan(m.cpt50) else m.cpt50


def gate(candidate: RouterMetrics, current: RouterMetrics | None, margin: float = 0.0) -> tuple[bool, str]:
    """Promote only a candidate better on the held-out slice: higher APGR, CPT(50%) no higher."""
    if current is None:
        return True, "no router serves yet"
    if candidate.apgr > current.apgr + margin and _cpt(candidate) <= _cpt(current):
        return True, (f"held-out APGR {candidate.apgr:.3f} > {current.apgr:.3f}, "
                      f"CPT50 {_cpt(candidate):.3f} <= {_cpt(current):.3f}")
    return False, (f"not better on the held-out slice: APGR {candidate.apgr:.3f} vs current {current.apgr:.3f}, "
                   f"CPT50 {_cpt(candidate):.3f} vs {_cpt(current):.3f}")


def _score(router: LearnedRouter, prompts: list[str], embed: EmbedFn | None) -> np.ndarray:
    emb = embed(prompts) if (router.scorer.uses_embeddings and embed is not None) else None
    if router.scorer.uses_embeddings and emb is None:
        return router.score_batch(prompts)
    return router.scorer.predict(prompts, emb)


def retrain(
    data: RoutingDataset,
    current: LearnedRouter | None,
    family: str = "tfidf-lr",
    target_escalation: float = 0.2,
    embed: EmbedFn | None = None,
    embedding: str | None = None,
    warm_start: RoutingDataset | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    min_labels: int = MIN_LABELS,
    margin: float = 0.0,
    refit_all: bool = True,
) -> Outcome:
    """Fit a candidate on the older labels, gate it against ``current`` on the newest ones; a
    candidate that passes is refitted on every label (``refit_all``) before it is returned: the gate
    judged the procedure on held-out labels, the artifact served should not waste them."""
    if len(data) < min_labels:
        return Outcome(False, f"{len(data)} labels; at least {min_labels} are needed to fit and hold out",
                       None, None, None)
    train, held = recent_split(data, holdout)
    tr = data.subset(train)
    ho = data.subset(held)
    if float(np.ptp(ho.weak - ho.strong)) == 0.0:
        return Outcome(False, "the held-out labels are all alike (no gap to recover): collect more", None, None, None)
    prompts, weak, strong = list(tr.prompts), tr.weak, tr.strong
    if warm_start is not None:
        prompts = list(warm_start.prompts) + prompts
        weak, strong = np.concatenate([warm_start.weak, weak]), np.concatenate([warm_start.strong, strong])
    scorer = make_scorer(family)
    if scorer.uses_embeddings and embed is None:
        raise ValueError(f"router family {family!r} needs prompt embeddings: give an embedding")
    scorer.fit(prompts, embed(prompts) if scorer.uses_embeddings and embed else None, weak, strong)
    candidate = LearnedRouter(scorer, 0.5, {"embedding": embedding} if scorer.uses_embeddings else {})
    cand_scores = _score(candidate, list(ho.prompts), embed)
    current_metrics = None
    if current is not None:
        cur_scores = _score(current, list(ho.prompts), embed)
        try:
            check_spread(cur_scores, "the held-out slice")
            current_metrics = evaluate_scores(cur_scores, ho.weak, ho.strong)
        except DegenerateRouter:
            current_metrics = evaluate_scores(cur_scores, ho.weak, ho.strong)  # a constant router: APGR ~0.5
    cand_metrics = evaluate_scores(cand_scores, ho.weak, ho.strong)
    try:
        check_spread(cand_scores, f"the held-out slice of {len(ho)} recent labels")
    except DegenerateRouter as exc:
        return Outcome(False, str(exc), candidate, cand_metrics, current_metrics)
    promote, reason = gate(cand_metrics, current_metrics, margin)
    if promote and refit_all:
        prompts, weak, strong = list(data.prompts), data.weak, data.strong
        if warm_start is not None:
            prompts = list(warm_start.prompts) + prompts
            weak, strong = np.concatenate([warm_start.weak, weak]), np.concatenate([warm_start.strong, strong])
        scorer = make_scorer(family)
        scorer.fit(prompts, embed(prompts) if scorer.uses_embeddings and embed else None, weak, strong)
        candidate = LearnedRouter(scorer, 0.5, candidate.metadata)
        cand_scores = _score(candidate, list(ho.prompts), embed)
    candidate.threshold = float(np.quantile(cand_scores, 1.0 - target_escalation))
    rows_by_source = counts_by_source([{"source": g} for g in data.groups or []])
    provenance = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_family": family,
        "features": features_of(scorer),
        **(embedding_metadata(scorer, embedding) if scorer.uses_embeddings and embedding else {}),
        "training_data": {"name": "traffic" + (f"+{warm_start.name}" if warm_start else ""), "rows": len(prompts),
                          "sha256": data_fingerprint(prompts, weak, strong),
                          "labels_by_source": rows_by_source,
                          "traffic_rows": len(data) if promote and refit_all else len(tr),
                          "refit_on_all_labels": bool(promote and refit_all),
                          "warm_start": {"name": warm_start.name, "rows": len(warm_start)} if warm_start else None},
        "holdout": {"rows": len(ho), "share": holdout, "candidate": cand_metrics.as_dict(),
                    "current": current_metrics.as_dict() if current_metrics else None},
        "metrics": cand_metrics.as_dict(),
        "target": {"kind": "escalation_rate", "value": target_escalation},
        "gate": {"promote": promote, "reason": reason},
        "score": "(1 + P(strong right) - P(weak right)) / 2: the strong model's expected gain in [0, 1]",
    }
    candidate.metadata.update(provenance)
    return Outcome(promote, reason, candidate, cand_metrics, current_metrics, provenance)
