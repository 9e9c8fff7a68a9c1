"""Retraining a route's router from its traffic labels, behind a promotion gate.

    rows = labels.rows(alias)                          # turnout.ledger.labels
    data = traffic_dataset(rows, alias)                # prompt, weak and strong outcome per label
    result = retrain(data, current, family="auto", target_escalation=0.2, times=label_times(rows))
    if result.promote: registry.promote(...)           # turnout.routing.artifacts

Every decision comes from k-fold cross-validation on the labels (:mod:`turnout.evals.selection`):
with ``family="auto"`` the family and its regularisation are the ones with the best out-of-fold
APGR; the candidate's out-of-fold scores are compared with the serving router's on the labels
that router never trained on, and the candidate is promoted only if a paired bootstrap puts the
lower ``confidence`` bound of its APGR gain above zero, and only if its scores spread
(:func:`turnout.routing.learned.check_spread`). The candidate is then fitted on every label (and
the warm start, a public data set, if given); its threshold is the ``1 - r`` quantile of its
scores on the newest quarter of the prompts: recent traffic, the population it will serve.
Provenance (label counts by source, data sha256, date, the family chosen and every one tried,
the gate's figures) goes into the artifact.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turnout.evals.datasets import RoutingDataset
from turnout.evals.routing_metrics import RouterMetrics
from turnout.evals.selection import AUTO, DEFAULT_CONFIDENCE, DEFAULT_FOLDS, candidates, choose, gate
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
MIN_LABELS = 40        # below this cross-validation says nothing
MIN_UNSEEN = 40        # labels the serving router never trained on, needed to compare with it
RECENT = 0.25          # the newest share of prompts the threshold is calibrated on


def _kept(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Rows that count: of several feedback labels on one request only the last."""
    last_feedback = {str(r["request_id"]): i for i, r in enumerate(rows)
                     if r["source"] == "feedback" and r.get("request_id")}
    return [i for i, r in enumerate(rows)
            if not (r["source"] == "feedback" and r.get("request_id") and last_feedback[str(r["request_id"])] != i)]


def traffic_dataset(rows: Sequence[dict[str, Any]], name: str = "traffic") -> RoutingDataset:
    """Label rows (oldest first) as outcome data. A label that knows one engine's outcome only
    (user feedback on the weak answer, a pairwise judge) takes the other as 1.0 (good): the row
    then says whether the weak answer sufficed, which is what the router ranks by. Of several
    feedback labels on one request only the last counts (a later feedback replaces the earlier)."""
    prompts, weak, strong, groups = [], [], [], []
    for i in _kept(rows):
        r = rows[i]
        prompts.append(str(r["prompt"]))
        weak.append(1.0 if r["weak_score"] is None else float(r["weak_score"]))
        strong.append(1.0 if r["strong_score"] is None else float(r["strong_score"]))
        groups.append(str(r["source"]))
    return RoutingDataset(name=name, prompts=prompts, weak=np.asarray(weak, float), strong=np.asarray(strong, float),
                          groups=groups, source="route_labels")


def label_times(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Each :func:`traffic_dataset` row's time (``ts``; its position where a row has none)."""
    return np.asarray([float(rows[i].get("ts") or i) for i in _kept(rows)], dtype=float)


def unseen_by(current: LearnedRouter | None, times: np.ndarray) -> np.ndarray:
    """Which labels ``current`` never trained on: those newer than the newest it was fitted on
    (``training_data.newest_label_ts``); for an older traffic artifact without it, all but its
    first ``traffic_rows``; for a router fitted elsewhere (a public data set), all."""
    td = (current.metadata.get("training_data") or {}) if current is not None else {}
    if td.get("newest_label_ts") is not None:
        return np.asarray(times > float(td["newest_label_ts"]))
    mask = np.ones(len(times), dtype=bool)
    if td.get("traffic_rows"):
        mask[: int(td["traffic_rows"])] = False
    return mask


def recent_split(data: RoutingDataset, holdout: float = RECENT) -> tuple[np.ndarray, np.ndarray]:
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


def _score(router: LearnedRouter, prompts: list[str], embed: EmbedFn | None) -> np.ndarray:
    emb = embed(prompts) if (router.scorer.uses_embeddings and embed is not None) else None
    if router.scorer.uses_embeddings and emb is None:
        return router.score_batch(prompts)
    return router.scorer.predict(prompts, emb)


def retrain(
    data: RoutingDataset,
    current: LearnedRouter | None,
    family: str = AUTO,
    target_escalation: float = 0.2,
    embed: EmbedFn | None = None,
    embedding: str | None = None,
    warm_start: RoutingDataset | None = None,
    times: np.ndarray | None = None,
    folds: int = DEFAULT_FOLDS,
    confidence: float = DEFAULT_CONFIDENCE,
    min_labels: int = MIN_LABELS,
    margin: float = 0.0,
) -> Outcome:
    """Choose the family (``auto``) and gate the candidate by ``folds``-fold cross-validation on
    ``data``; the candidate is fitted on every label. ``times``: each label's time
    (:func:`label_times`; default its position), which says the labels ``current`` never trained
    on (:func:`unseen_by`), the only ones the two are compared on."""
    if len(data) < min_labels:
        return Outcome(False, f"{len(data)} labels; at least {min_labels} are needed to cross-validate",
                       None, None, None)
    if float(np.ptp(data.weak - data.strong)) == 0.0:
        return Outcome(False, "the labels are all alike (no gap to recover): collect more", None, None, None)
    times = np.arange(len(data), dtype=float) if times is None else np.asarray(times, dtype=float)
    unseen = unseen_by(current, times)
    if current is not None and int(unseen.sum()) < MIN_UNSEEN:
        return Outcome(False, f"{int(unseen.sum())} labels the serving router never trained on; at least "
                       f"{MIN_UNSEEN} are needed to compare with it", None, None, None)
    options = candidates(family, embed is not None)
    if family != AUTO and make_scorer(family).uses_embeddings and embed is None:
        raise ValueError(f"router family {family!r} needs prompt embeddings: give an embedding")
    needs_emb = any(make_scorer(f).uses_embeddings for f, _ in options)
    emb = embed(list(data.prompts)) if needs_emb and embed is not None else None
    warm_emb = embed(list(warm_start.prompts)) if needs_emb and embed is not None and warm_start else None
    choice, oof, tried = choose(options, data, emb, warm_start, warm_emb, folds)
    rows = np.flatnonzero(unseen)
    ev = data.subset(rows)
    cur_scores = _score(current, list(ev.prompts), embed) if current is not None else None
    verdict = gate(oof[rows], cur_scores, ev.weak, ev.strong, confidence, margin)
    promote, reason = verdict.promote, verdict.reason
    prompts, weak, strong = list(data.prompts), data.weak, data.strong
    x = emb
    if warm_start is not None:
        prompts = list(warm_start.prompts) + prompts
        weak, strong = np.concatenate([warm_start.weak, weak]), np.concatenate([warm_start.strong, strong])
        x = np.vstack([warm_emb, emb]) if emb is not None and warm_emb is not None else None
    scorer = make_scorer(choice.family, **choice.params)
    scorer.fit(prompts, x if scorer.uses_embeddings else None, weak, strong)
    candidate = LearnedRouter(scorer, 0.5, {"embedding": embedding} if scorer.uses_embeddings else {})
    _, recent = recent_split(data, RECENT)
    recent_scores = _score(candidate, [data.prompts[i] for i in recent], embed)
    candidate.threshold = float(np.quantile(recent_scores, 1.0 - target_escalation))
    try:
        check_spread(oof[rows], f"the {len(rows)} labels of the gate")
        check_spread(recent_scores, f"the newest {len(recent)} labels")
    except DegenerateRouter as exc:
        promote, reason = False, str(exc)
    provenance = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_family": choice.family,
        "features": features_of(scorer),
        **(embedding_metadata(scorer, embedding) if scorer.uses_embeddings and embedding else {}),
        "training_data": {"name": "traffic" + (f"+{warm_start.name}" if warm_start else ""), "rows": len(prompts),
                          "sha256": data_fingerprint(prompts, weak, strong),
                          "labels_by_source": counts_by_source([{"source": g} for g in data.groups or []]),
                          "traffic_rows": len(data), "refit_on_all_labels": True,
                          "newest_label_ts": float(times.max()),
                          "warm_start": {"name": warm_start.name, "rows": len(warm_start)} if warm_start else None},
        "selection": {"asked": family, "folds": folds, "chosen": choice.label, "params": choice.params,
                      "cv_apgr": {c.label: round(c.apgr, 4) for c in tried}},
        "gate": {"promote": promote, "reason": reason, "rows": verdict.rows, "confidence": confidence,
                 "difference": verdict.difference, "lower_bound": verdict.lower,
                 "candidate": verdict.candidate.as_dict(),
                 "current": verdict.current.as_dict() if verdict.current else None},
        "metrics": verdict.candidate.as_dict(),
        "target": {"kind": "escalation_rate", "value": target_escalation},
        "score": "(1 + P(strong right) - P(weak right)) / 2: the strong model's expected gain in [0, 1]",
    }
    candidate.metadata.update(provenance)
    return Outcome(promote, reason, candidate, verdict.candidate, verdict.current, provenance)
