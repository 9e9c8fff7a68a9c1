"""Thresholds for a router's score, calibrated as RouteLLM's ``calibrate_threshold`` does.

A target escalation rate ``r`` gives the ``1 - r`` quantile of the router's scores on
representative prompts: about ``r`` of them score at or above it. A target quality gives the
highest threshold whose routed quality, on held-out outcomes, reaches the target. Both should be
computed on out-of-fold scores, never on scores of the prompts a router was trained on.
"""

from __future__ import annotations

import numpy as np


def threshold_for_escalation(scores: np.ndarray, rate: float) -> float:
    """The score quantile above which a share ``rate`` of prompts goes to the strong model."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"target escalation rate must be in [0, 1], got {rate}")
    return float(np.quantile(np.asarray(scores, dtype=float), 1.0 - rate))


def threshold_for_quality(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, target: float) -> float:
    """Highest threshold whose routed mean quality reaches ``target`` (escalate ``score >= t``)."""
    s = np.asarray(scores, dtype=float)
    w, g = np.asarray(weak, dtype=float), np.asarray(strong, dtype=float)
    order = np.argsort(-s, kind="stable")
    # Quality after escalating the top-k prompts, k = 0..n.
    gains = np.concatenate([[0.0], np.cumsum((g - w)[order])])
    quality = (w.sum() + gains) / len(s)
    reachable = np.flatnonzero(quality >= target)
    if reachable.size == 0:
        raise ValueError(f"target quality {target:.4f} is above the best reachable {quality.max():.4f}")
    k = int(reachable[0])
    if k == 0:
        return float(np.nextafter(s.max(), np.inf))
    return float(s[order[k - 1]])
