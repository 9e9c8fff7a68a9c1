"""Pure metric functions for the guard evaluation (no I/O, no heavy imports).

PII spans are scored by *character coverage*, so that a detector which splits one
gold address into street, city and zip (or merges a title into a name) is neither
rewarded nor punished for the way it cuts the text:

- a gold span is **found** when predicted spans (of the mapped type, for the
  type-aware score; of any type, for the type-agnostic one) cover at least
  ``min_cover`` of its non-blank characters;
- a predicted span is **correct** when at least ``min_cover`` of its non-blank
  characters lie inside gold spans (of the same type, or of any type).

precision = correct predictions / predictions, recall = found gold / gold,
F-beta with beta = 2 (recall weighs four times precision), as in presidio-research.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Span = tuple[int, int, str]  # start, end, type


@dataclass
class PRF:
    tp_pred: int = 0      # predictions judged correct
    n_pred: int = 0
    tp_gold: int = 0      # gold spans judged found
    n_gold: int = 0

    def add(self, other: PRF) -> None:
        self.tp_pred += other.tp_pred
        self.n_pred += other.n_pred
        self.tp_gold += other.tp_gold
        self.n_gold += other.n_gold

    @property
    def precision(self) -> float:
        return self.tp_pred / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        return self.tp_gold / self.n_gold if self.n_gold else 1.0

    def f_beta(self, beta: float = 2.0) -> float:
        return f_beta(self.precision, self.recall, beta)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f2": round(self.f_beta(2.0), 4),
            "n_gold": self.n_gold,
            "n_pred": self.n_pred,
        }


def f_beta(precision: float, recall: float, beta: float = 2.0) -> float:
    b2 = beta * beta
    denom = b2 * precision + recall
    return (1 + b2) * precision * recall / denom if denom else 0.0


def _mask(text: str, spans: Iterable[tuple[int, int]]) -> list[bool]:
    m = [False] * len(text)
    for s, e in spans:
        for i in range(max(0, s), min(len(text), e)):
            m[i] = True
    return m


def _covered(text: str, span: tuple[int, int], mask: Sequence[bool]) -> float:
    idx = [i for i in range(span[0], min(span[1], len(text))) if not text[i].isspace()]
    if not idx:
        return 0.0
    return sum(1 for i in idx if mask[i]) / len(idx)


def score_record(
    text: str,
    gold: Sequence[Span],
    pred: Sequence[Span],
    *,
    type_aware: bool,
    min_cover: float = 0.5,
) -> dict[str, PRF]:
    """Score one record; returns per-type PRF keyed by gold type (recall side) and by
    predicted type (precision side), plus the key ``"*"`` for all types together.
    With ``type_aware`` False, every span has the same type ``"*"``."""
    out: dict[str, PRF] = {"*": PRF()}

    def bucket(t: str) -> PRF:
        return out.setdefault(t, PRF())

    for s, e, t in gold:
        same = [(ps, pe) for ps, pe, pt in pred if not type_aware or pt == t]
        hit = _covered(text, (s, e), _mask(text, same)) >= min_cover
        for b in (bucket(t), out["*"]) if type_aware else (out["*"],):
            b.n_gold += 1
            b.tp_gold += int(hit)
    for s, e, t in pred:
        same = [(gs, ge) for gs, ge, gt in gold if not type_aware or gt == t]
        ok = _covered(text, (s, e), _mask(text, same)) >= min_cover
        for b in (bucket(t), out["*"]) if type_aware else (out["*"],):
            b.n_pred += 1
            b.tp_pred += int(ok)
    return out


def map_types(spans: Iterable[Span], mapping: Mapping[str, str | None]) -> list[Span]:
    """Rename predicted types to the gold vocabulary; a type mapped to None is dropped,
    a type absent from the mapping is kept as is (and so counts as a wrong type)."""
    out: list[Span] = []
    for s, e, t in spans:
        m = mapping.get(t, t)
        if m is not None:
            out.append((s, e, m))
    return out


@dataclass
class PiiReport:
    type_aware: dict[str, PRF] = field(default_factory=dict)
    agnostic: PRF = field(default_factory=PRF)

    def add(self, text: str, gold: Sequence[Span], pred: Sequence[Span], min_cover: float = 0.5) -> None:
        for t, prf in score_record(text, gold, pred, type_aware=True, min_cover=min_cover).items():
            self.type_aware.setdefault(t, PRF()).add(prf)
        self.agnostic.add(score_record(text, gold, pred, type_aware=False, min_cover=min_cover)["*"])


# ---------------------------------------------------------------- classification


def confusion(labels: Sequence[int], predicted: Sequence[int]) -> tuple[int, int, int, int]:
    """Returns (tp, fp, tn, fn) for binary labels (1 = positive)."""
    tp = fp = tn = fn = 0
    for y, p in zip(labels, predicted, strict=True):
        if y and p:
            tp += 1
        elif p:
            fp += 1
        elif y:
            fn += 1
        else:
            tn += 1
    return tp, fp, tn, fn


def binary_metrics(labels: Sequence[int], predicted: Sequence[int]) -> dict[str, float]:
    tp, fp, tn, fn = confusion(labels, predicted)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {"precision": precision, "recall": recall, "fpr": fpr, "f1": f_beta(precision, recall, 1.0),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random
    negative), ties counting one half (Mann-Whitney U with average ranks)."""
    pairs = sorted(zip(scores, labels, strict=True))
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return math.nan
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1  # ranks are 1-based
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def percentile(values: Sequence[float], q: float) -> float:
    """Percentile by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)
