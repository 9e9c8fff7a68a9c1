"""Fitting helpers for the guards' trained models (the injection classifier): a threshold for a
target false-positive rate and a fixed-seed stratified split. Pure functions, stdlib only; the
guard evaluation (turnout.evals) uses them too."""

from __future__ import annotations

import math
from collections.abc import Sequence


def threshold_for_fpr(neg_scores: Sequence[float], max_fpr: float) -> float:
    """Smallest threshold t such that the share of negatives with score >= t is at most
    ``max_fpr`` (a prediction is positive when score >= t)."""
    s = sorted(neg_scores, reverse=True)
    allowed = math.floor(max_fpr * len(s) + 1e-9)
    if allowed >= len(s):
        return -math.inf
    # the threshold sits just above the (allowed+1)-th highest negative
    return math.nextafter(s[allowed], math.inf)


def stratified_split(labels: Sequence[int], test_share: float, seed: int) -> tuple[list[int], list[int]]:
    """Fixed-seed stratified split of indices into (train, test)."""
    import random

    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for cls in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == cls]
        rng.shuffle(idx)
        k = round(len(idx) * test_share)
        test.extend(idx[:k])
        train.extend(idx[k:])
    return sorted(train), sorted(test)
