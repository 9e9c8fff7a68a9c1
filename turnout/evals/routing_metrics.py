"""Router quality metrics as RouteLLM computes them: the quality-vs-escalation curve, APGR, CPT.

A router gives every prompt a score, P(strong model needed). For a threshold ``t`` the prompts
with ``score >= t`` go to the strong model, the rest to the weak one; quality at ``t`` is the
mean over prompts of the chosen model's outcome. RouteLLM (``routellm/evals/benchmarks.py``,
``evaluate.py``) takes the thresholds at the quantiles ``linspace(0, 1, bins + 1)`` of the
router's own scores (``pd.qcut(scores, bins, retbins=True)``, 10 bins by default), routes with
``>=`` except at the last (largest) threshold where it uses ``>`` so that the curve reaches 0%
strong calls, and sorts the points by the share of strong calls.

- area: trapezoid rule of quality over the strong-call share (a fraction in [0, 1]).
- APGR = (router area - weak area) / (strong area - weak area), where the weak and strong areas
  are constant lines at each model's mean quality over the same x-range.
- CPT(x): the smallest strong-call share at which the curve, linearly interpolated, reaches
  ``weak + x * (strong - weak)``. RouteLLM uses ``np.interp(target, quality, share)``, which
  equals this whenever quality increases along the curve (``np.interp`` assumes it does); taking
  the first crossing stays well defined when a poor router's curve dips.

All functions take plain numpy arrays; nothing here knows about data sets or routers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 10


@dataclass(frozen=True)
class QualityCurve:
    """Points of a router's quality curve, sorted by the share of strong calls."""

    strong_share: np.ndarray
    quality: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class RouterMetrics:
    """APGR and CPT of one router on one data set (CPT values are shares in [0, 1])."""

    n: int
    apgr: float
    cpt50: float
    cpt80: float
    weak_quality: float
    strong_quality: float
    curve: QualityCurve

    def as_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "apgr": self.apgr,
            "cpt50": self.cpt50,
            "cpt80": self.cpt80,
            "weak_quality": self.weak_quality,
            "strong_quality": self.strong_quality,
        }


def _as_vectors(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> tuple[np.ndarray, ...]:
    s, w, g = (np.asarray(a, dtype=float) for a in (scores, weak, strong))
    if s.ndim != 1 or s.shape != w.shape or s.shape != g.shape:
        raise ValueError(f"scores, weak and strong must be 1-D and equal in length: {s.shape}, {w.shape}, {g.shape}")
    if s.size == 0:
        raise ValueError("no prompts to evaluate")
    if not np.all(np.isfinite(s)):
        raise ValueError("router scores must be finite")
    return s, w, g


def quantile_thresholds(scores: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The ``bins + 1`` quantiles ``linspace(0, 1, bins + 1)`` of the scores (linear interpolation)."""
    if bins < 1:
        raise ValueError("bins must be at least 1")
    edges: np.ndarray = np.quantile(np.asarray(scores, dtype=float), np.linspace(0.0, 1.0, bins + 1))
    return edges


def route_at(scores: np.ndarray, threshold: float, strict: bool = False) -> np.ndarray:
    """Boolean mask of prompts sent to the strong model at ``threshold``."""
    return scores > threshold if strict else scores >= threshold


def quality_curve(
    scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, bins: int = DEFAULT_BINS
) -> QualityCurve:
    """Quality and strong-call share at each quantile threshold of the scores."""
    s, w, g = _as_vectors(scores, weak, strong)
    thresholds = quantile_thresholds(s, bins)
    last = len(thresholds) - 1
    shares = np.empty(len(thresholds))
    quality = np.empty(len(thresholds))
    for i, threshold in enumerate(thresholds):
        to_strong = route_at(s, float(threshold), strict=i == last)
        shares[i] = to_strong.mean()
        quality[i] = np.where(to_strong, g, w).mean()
    order = np.argsort(shares, kind="stable")
    return QualityCurve(strong_share=shares[order], quality=quality[order], thresholds=thresholds[order])


def curve_area(curve: QualityCurve) -> float:
    """Trapezoid-rule area under quality over the strong-call share."""
    return float(np.trapezoid(curve.quality, curve.strong_share))


def apgr(curve: QualityCurve, weak_quality: float, strong_quality: float) -> float:
    """Average performance gap recovered; NaN when both models are equally good."""
    span = float(curve.strong_share[-1] - curve.strong_share[0])
    weak_area = weak_quality * span
    strong_area = strong_quality * span
    if strong_area == weak_area:
        return float("nan")
    return (curve_area(curve) - weak_area) / (strong_area - weak_area)


def cpt(curve: QualityCurve, fraction: float, weak_quality: float, strong_quality: float) -> float:
    """Smallest strong-call share recovering ``fraction`` of the quality gap; NaN if the gap is not positive."""
    if strong_quality <= weak_quality:
        return float("nan")
    target = weak_quality + fraction * (strong_quality - weak_quality)
    x, y = curve.strong_share, curve.quality
    if y[0] >= target:
        return float(x[0])
    for i in range(len(x) - 1):
        if y[i] < target <= y[i + 1]:
            return float(x[i] + (target - y[i]) / (y[i + 1] - y[i]) * (x[i + 1] - x[i]))
    return float("nan")


def pgr_at(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, share: float) -> float:
    """Performance gap recovered at one operating point: the ``share`` of prompts scored highest go
    to the strong model (ties broken by order), the rest to the weak one. This is what a serving
    router calibrated to that escalation share delivers; APGR averages over every share. NaN when
    both models are equally good."""
    s, w, g = _as_vectors(scores, weak, strong)
    wq, sq = float(w.mean()), float(g.mean())
    if sq == wq or s.size == 0:
        return float("nan")
    k = int(round(share * s.size))
    strong_rows = np.argsort(-s, kind="stable")[:k]
    routed = w.copy()
    routed[strong_rows] = g[strong_rows]
    return (float(routed.mean()) - wq) / (sq - wq)


def evaluate_scores(
    scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, bins: int = DEFAULT_BINS
) -> RouterMetrics:
    """APGR, CPT(50%) and CPT(80%) of a router's scores against both models' outcomes."""
    s, w, g = _as_vectors(scores, weak, strong)
    curve = quality_curve(s, w, g, bins)
    wq, sq = float(w.mean()), float(g.mean())
    return RouterMetrics(
        n=int(s.size),
        apgr=apgr(curve, wq, sq),
        cpt50=cpt(curve, 0.5, wq, sq),
        cpt80=cpt(curve, 0.8, wq, sq),
        weak_quality=wq,
        strong_quality=sq,
        curve=curve,
    )


def oracle_scores(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Scores of a router that knows the outcomes: the strong model's gain on each prompt."""
    gain: np.ndarray = np.asarray(strong, dtype=float) - np.asarray(weak, dtype=float)
    return gain


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """Scores of the random router (uniform, seeded)."""
    return np.random.default_rng(seed).random(n)


def optimal_quality(weak: np.ndarray, strong: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Best achievable quality at each strong-call share: escalate the largest gains first."""
    w, g = np.asarray(weak, dtype=float), np.asarray(strong, dtype=float)
    gains = np.sort(np.maximum(g - w, 0.0))[::-1]
    cumulative = np.concatenate([[0.0], np.cumsum(gains)])
    calls = np.clip(np.asarray(shares, dtype=float), 0.0, 1.0) * w.size
    quality: np.ndarray = (w.sum() + np.interp(calls, np.arange(w.size + 1), cumulative)) / w.size
    return quality
