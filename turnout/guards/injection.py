"""Prompt-injection / jailbreak classifier: hashed TF-IDF character and word n-grams,
logistic regression, plus a few high-precision phrase heuristics.

The features are hashed (scikit-learn's ``HashingVectorizer``, stateless), so the
shipped artifact is only numbers: the idf weights and coefficients of the features seen
in training, the intercept and the calibrated threshold (``data/injection.npz``, built
by ``python -m turnout.guards.injection train``). Training uses a fixed-seed stratified
split of the labelled file and never sees its held-out part; the threshold is the one
that keeps the false-positive rate on benign prompts at or under ``target_fpr`` in
5-fold out-of-fold scores of the training part.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout.guards.base import Finding

if TYPE_CHECKING:
    import numpy as np

    from turnout.config import GuardsConfig

ARTIFACT = Path(__file__).with_name("data") / "injection.npz"
N_FEATURES = 2**20
SPLIT_SEED = 13
HOLDOUT_SHARE = 0.25

# phrase heuristics: (pattern, score). Kept few and specific; the model does the rest.
HEURISTICS: list[tuple[re.Pattern[str], float]] = [
    (re.compile(r"\b(?:ignore|disregard|forget|override)\b.{0,30}\b(?:previous|prior|above|earlier|all|any|your)\b"
                r".{0,30}\b(?:instructions?|prompts?|rules|guidelines|directives|policies)\b", re.IGNORECASE | re.DOTALL), 0.95),
    (re.compile(r"\b(?:DAN|STAN|DUDE|AIM|BetterDAN|AntiGPT|DevMode)\b.{0,40}\b(?:mode|stands for|now|jailbr)", re.DOTALL), 0.9),
    (re.compile(r"\b(?:developer|god|jailbreak|unfiltered|uncensored|unrestricted)\s+mode\b", re.IGNORECASE), 0.9),
    (re.compile(r"\bdo anything now\b", re.IGNORECASE), 0.95),
    (re.compile(r"\b(?:without|no)\s+(?:any\s+)?(?:moral|ethical|content)\s+(?:restrictions|filters|guidelines|policy)",
                re.IGNORECASE), 0.85),
    (re.compile(r"\b(?:reveal|print|show|repeat|output)\b.{0,30}\b(?:system prompt|initial instructions|hidden "
                r"instructions)\b", re.IGNORECASE | re.DOTALL), 0.9),
    (re.compile(r"\bopenai(?:'s)?\s+(?:content\s+)?polic(?:y|ies)\b", re.IGNORECASE), 0.7),
    (re.compile(r"\bjailbr(?:eak|oken)\b", re.IGNORECASE), 0.75),
]


def heuristic_score(text: str) -> float:
    return max((s for rx, s in HEURISTICS if rx.search(text)), default=0.0)


def _vectorizers() -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import HashingVectorizer

    common: dict[str, Any] = {"n_features": N_FEATURES, "alternate_sign": False, "norm": None, "lowercase": True,
                              "dtype": "float32"}
    char = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)
    word = HashingVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", **common)
    return char, word


@dataclass
class InjectionModel:
    idf: Any          # dense float32 array of length 2 * N_FEATURES (char then word), 0 for unseen
    coef: Any         # dense float32 array, same length
    intercept: float
    threshold: float  # on the combined score, chosen for target_fpr
    max_chars: int = 20_000

    @classmethod
    def load(cls, path: Path = ARTIFACT) -> InjectionModel:
        import numpy as np

        z = np.load(path)
        size = int(z["size"])
        idf = np.zeros(size, dtype="float32")
        coef = np.zeros(size, dtype="float32")
        idf[z["index"]] = z["idf"]
        coef[z["index"]] = z["coef"]
        return cls(idf, coef, float(z["intercept"]), float(z["threshold"]))

    def save(self, path: Path) -> None:
        import numpy as np

        index = np.flatnonzero(self.idf).astype("int32")
        np.savez_compressed(path, size=np.int64(len(self.idf)), index=index, idf=self.idf[index].astype("float32"),
                            coef=self.coef[index].astype("float32"), intercept=np.float64(self.intercept),
                            threshold=np.float64(self.threshold))

    def features(self, texts: Sequence[str]) -> Any:
        import numpy as np
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        char, word = _vectorizers()
        clipped = [t[: self.max_chars] for t in texts]
        x = sp.hstack([char.transform(clipped), word.transform(clipped)]).tocsr()
        x.data = np.log1p(x.data)  # sublinear tf
        x = x.multiply(self.idf).tocsr()
        return normalize(x)

    def model_scores(self, texts: Sequence[str]) -> list[float]:
        import numpy as np

        z = self.features(texts) @ self.coef + self.intercept
        return list(1.0 / (1.0 + np.exp(-z)))

    def scores(self, texts: Sequence[str]) -> list[float]:
        return [max(m, heuristic_score(t)) for m, t in zip(self.model_scores(texts), texts, strict=True)]


def fit(texts: Sequence[str], labels: Sequence[int], *, c: float = 10.0, target_fpr: float = 0.015,
        folds: int = 5, seed: int = SPLIT_SEED) -> InjectionModel:
    """Fit idf and logistic regression on ``texts``; choose the threshold on out-of-fold
    scores of the same texts (so no held-out data is touched)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from turnout.guards.calibration import threshold_for_fpr

    def _fit(tx: Sequence[str], y: Sequence[int] | np.ndarray) -> InjectionModel:
        import scipy.sparse as sp
        from sklearn.linear_model import LogisticRegression

        char, word = _vectorizers()
        x = sp.hstack([char.transform(tx), word.transform(tx)]).tocsr()
        df = np.asarray((x > 0).sum(axis=0)).ravel()
        n = len(tx)
        idf = np.where(df > 0, np.log((1 + n) / (1 + df)) + 1, 0).astype("float32")
        model = InjectionModel(idf, np.zeros_like(idf), 0.0, 0.5)
        xf = model.features(tx)
        lr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", solver="liblinear")
        lr.fit(xf, y)
        model.coef = lr.coef_.ravel().astype("float32")
        model.intercept = float(lr.intercept_[0])
        return model

    texts = list(texts)
    y = np.asarray(labels)
    oof = np.zeros(len(texts))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(texts, y):
        m = _fit([texts[i] for i in tr], y[tr])
        oof[te] = m.scores([texts[i] for i in te])
    model = _fit(texts, y)
    model.threshold = float(threshold_for_fpr([s for s, lab in zip(oof, y, strict=True) if not lab], target_fpr))
    return model


def load_csv(path: str | Path) -> tuple[list[str], list[int]]:
    """``prompt,type`` rows; type ``jailbreak``/``injection``/``1`` is positive. Exact
    duplicates are dropped (the first label wins) so a split cannot leak."""
    csv.field_size_limit(sys.maxsize)
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[int] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            t = row.get("prompt") or row.get("text") or ""
            if t in seen:
                continue
            seen.add(t)
            texts.append(t)
            labels.append(int(str(row.get("type", row.get("label", ""))).strip().lower()
                              in ("jailbreak", "injection", "1", "true", "malicious")))
    return texts, labels


def split(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """The fixed split used everywhere: stratified, seed 13, 25 % held out."""
    from turnout.guards.calibration import stratified_split

    return stratified_split(labels, HOLDOUT_SHARE, SPLIT_SEED)


class InjectionGuard:
    """Score a text for prompt injection / jailbreak. Returns one whole-text finding
    (span 0, 0) when the score reaches ``flag_threshold``; its score is the combined
    model/heuristic score, which policy compares with ``block_threshold``."""

    name = "injection"
    kinds = ("injection",)
    config_model = None
    scans_output = False

    @classmethod
    def from_config(cls, cfg: GuardsConfig, options: None) -> InjectionGuard:
        """The shipped model and its calibrated threshold (``guards.injection_threshold`` is the policy's)."""
        return cls()


    def __init__(self, model: InjectionModel | None = None, *, flag_threshold: float | None = None) -> None:
        self.model = model or InjectionModel.load()
        self.block_threshold = self.model.threshold
        # below the block threshold, a band of half its width is flagged (label only)
        self.flag_threshold = flag_threshold if flag_threshold is not None else self.block_threshold / 2
        self.score("warm-up")  # imports and first-call allocations now, not on the first request

    def score(self, text: str) -> float:
        return float(self.model.scores([text])[0]) if text.strip() else 0.0

    def inspect(self, text: str) -> list[Finding]:
        s = self.score(text)
        if s < self.flag_threshold:
            return []
        typ = "JAILBREAK" if s >= self.block_threshold else "SUSPECTED_INJECTION"
        return [Finding("injection", typ, 0, 0, round(s, 4), self.name)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m turnout.guards.injection")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fit on the training part of a prompt,type CSV and write the artifact")
    t.add_argument("--data", required=True)
    t.add_argument("--out", default=str(ARTIFACT))
    t.add_argument("--target-fpr", type=float, default=0.015)
    args = p.parse_args(argv)
    texts, labels = load_csv(args.data)
    train_idx, _ = split(labels)
    model = fit([texts[i] for i in train_idx], [labels[i] for i in train_idx], target_fpr=args.target_fpr)
    model.save(Path(args.out))
    print(f"trained on {len(train_idx)} of {len(texts)} prompts; threshold {model.threshold:.4f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
