"""Model families for the learned router. Each turns prompts into P(strong model needed).

A family is fit on prompts with both models' outcomes and predicts for new prompts. Every family
estimates the probability that the strong model is right, ``p_s``, and that the weak one is right,
``p_w``, and scores ``(1 + p_s - p_w) / 2``: the strong model's expected gain on the prompt, mapped
to [0, 1] (0.5 = no expected gain). In 5-fold CV (TF-IDF features) ranking by the expected gain
beat ``p_s * (1 - p_w)``, ``1 - p_w`` and a single classifier on "strong right, weak wrong" on
both MMLU and GSM8K.

Families (all score with numpy only; scikit-learn is used for fitting):

- ``tfidf-lr``: TF-IDF of words, two logistic regressions.
- ``emb-knn``: k nearest neighbours over MiniLM embeddings, neighbour outcome rates shrunk to
  the training mean ("similar questions are hard").
- ``emb-lr``: two logistic regressions on MiniLM embeddings.
- ``hybrid``: two logistic regressions on TF-IDF + embeddings + the kNN rates (computed
  leave-one-out on the training rows so they carry no label of their own row).
- ``hybrid-stats``: ``hybrid`` plus prompt length/layout and math-problem structure statistics.
- ``stacked``: the TF-IDF, embedding and kNN models as base models; their out-of-fold outputs
  (inner split of the training rows) and the same statistics feed a final pair of regressions.

Each family's fitted state is a flat dict of numpy arrays so artifacts need no pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from scipy import sparse

from turnout.routing.features import Tfidf, math_stats_matrix, stats_matrix

State = dict[str, np.ndarray]


class Scorer(Protocol):
    name: ClassVar[str]
    uses_embeddings: ClassVar[bool]

    def fit(self, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> None: ...

    def predict(self, prompts: list[str], emb: np.ndarray | None) -> np.ndarray: ...

    def state(self) -> State: ...

    def load_state(self, state: State) -> None: ...


def need_probability(p_strong: np.ndarray, p_weak: np.ndarray) -> np.ndarray:
    """The strong model's expected gain ``p_s - p_w`` mapped from [-1, 1] to [0, 1]."""
    need: np.ndarray = (1.0 + np.clip(p_strong, 0.0, 1.0) - np.clip(p_weak, 0.0, 1.0)) / 2.0
    return need


def _sigmoid(z: np.ndarray) -> np.ndarray:
    s: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    return s


@dataclass
class LinearPair:
    """Two logistic regressions sharing one design matrix: strong-correct and weak-correct."""

    c: float = 0.3
    coef: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), np.float32))
    intercept: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))

    def fit(self, x: sparse.spmatrix | np.ndarray, weak: np.ndarray, strong: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        rows, biases = [], []
        for outcome in (strong, weak):
            y = (np.asarray(outcome) >= 0.5).astype(int)
            if y.min() == y.max():  # one class only: a constant model
                rows.append(np.zeros(x.shape[1]))
                biases.append(30.0 if y[0] else -30.0)
                continue
            model = LogisticRegression(C=self.c, max_iter=3000).fit(x, y)
            rows.append(model.coef_[0])
            biases.append(float(model.intercept_[0]))
        self.coef = np.asarray(rows, dtype=np.float32)
        self.intercept = np.asarray(biases, dtype=np.float32)

    def predict(self, x: sparse.spmatrix | np.ndarray) -> np.ndarray:
        z = np.asarray(x @ self.coef.T) + self.intercept
        p = _sigmoid(z)
        return need_probability(p[:, 0], p[:, 1])


@dataclass
class NeighbourRates:
    """kNN over unit-norm embeddings: shrunk mean outcomes of the k most similar training prompts."""

    k: int = 50
    prior_weight: float = 5.0
    keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    outcomes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))

    def fit(self, emb: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> None:
        self.keys = np.asarray(emb, dtype=np.float32)
        self.outcomes = np.stack([strong, weak], axis=1).astype(np.float32)

    def rates(self, emb: np.ndarray, leave_one_out: bool = False, block: int = 2048) -> np.ndarray:
        """(n, 2) shrunk neighbour means of (strong, weak) outcomes."""
        k = min(self.k, len(self.keys) - (1 if leave_one_out else 0))
        prior = self.outcomes.mean(axis=0)
        out = np.empty((len(emb), 2), dtype=np.float32)
        for start in range(0, len(emb), block):
            sims = np.asarray(emb[start : start + block], dtype=np.float32) @ self.keys.T
            if leave_one_out:
                rows = np.arange(sims.shape[0])
                sims[rows, rows + start] = -np.inf
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            sums = self.outcomes[idx].sum(axis=1)
            out[start : start + block] = (sums + self.prior_weight * prior) / (k + self.prior_weight)
        return out

    def predict(self, emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        r = self.rates(emb, leave_one_out)
        return need_probability(r[:, 0], r[:, 1])


def _require(emb: np.ndarray | None, name: str) -> np.ndarray:
    if emb is None:
        raise ValueError(f"router family {name!r} needs prompt embeddings")
    return emb


class TfidfLR:
    name: ClassVar[str] = "tfidf-lr"
    uses_embeddings: ClassVar[bool] = False

    def __init__(self, c: float = 0.3, min_df: int = 2) -> None:
        self.min_df = min_df
        self.tfidf: Tfidf | None = None
        self.linear = LinearPair(c=c)

    def fit(self, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> None:
        self.tfidf = Tfidf.fit(prompts, min_df=self.min_df)
        self.linear.fit(self.tfidf.transform(prompts), weak, strong)

    def predict(self, prompts: list[str], emb: np.ndarray | None) -> np.ndarray:
        assert self.tfidf is not None, "fit or load the scorer first"
        return self.linear.predict(self.tfidf.transform(prompts))

    def state(self) -> State:
        assert self.tfidf is not None
        return {
            "tfidf_terms": np.asarray(self.tfidf.terms()),
            "tfidf_idf": self.tfidf.idf,
            "tfidf_ngrams": np.asarray(self.tfidf.ngrams),
            "coef": self.linear.coef,
            "intercept": self.linear.intercept,
        }

    def load_state(self, state: State) -> None:
        self.tfidf = Tfidf.from_terms([str(t) for t in state["tfidf_terms"]], state["tfidf_idf"],
                                      int(state["tfidf_ngrams"]))
        self.linear.coef, self.linear.intercept = state["coef"], state["intercept"]


class EmbeddingKNN:
    name: ClassVar[str] = "emb-knn"
    uses_embeddings: ClassVar[bool] = True

    def __init__(self, k: int = 50) -> None:
        self.knn = NeighbourRates(k=k)

    def fit(self, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> None:
        self.knn.fit(_require(emb, self.name), weak, strong)

    def predict(self, prompts: list[str], emb: np.ndarray | None) -> np.ndarray:
        return self.knn.predict(_require(emb, self.name))

    def state(self) -> State:
        return {"keys": self.knn.keys.astype(np.float16), "outcomes": self.knn.outcomes, "k": np.asarray(self.knn.k)}

    def load_state(self, state: State) -> None:
        self.knn.keys = state["keys"].astype(np.float32)
        self.knn.outcomes = state["outcomes"]
        self.knn.k = int(state["k"])


class EmbeddingLR:
    name: ClassVar[str] = "emb-lr"
    uses_embeddings: ClassVar[bool] = True

    def __init__(self, c: float = 1.0) -> None:
        self.linear = LinearPair(c=c)

    def fit(self, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> None:
        self.linear.fit(_require(emb, self.name), weak, strong)

    def predict(self, prompts: list[str], emb: np.ndarray | None) -> np.ndarray:
        return self.linear.predict(_require(emb, self.name))

    def state(self) -> State:
        return {"coef": self.linear.coef, "intercept": self.linear.intercept}

    def load_state(self, state: State) -> None:
        self.linear.coef, self.linear.intercept = state["coef"], state["intercept"]


class Hybrid:
    """Logistic regressions over TF-IDF, embeddings and kNN neighbour rates."""

    name: ClassVar[str] = "hybrid"
    uses_embeddings: ClassVar[bool] = True
    KNN_SCALE = 3.0

    def __init__(self, c: float = 0.3, k: int = 50, min_df: int = 2) -> None:
        self.min_df = min_df
        self.tfidf: Tfidf | None = None
        self.knn = NeighbourRates(k=k)
        self.linear = LinearPair(c=c)

    def _design(self, prompts: list[str], emb: np.ndarray, rates: np.ndarray) -> sparse.csr_matrix:
        assert self.tfidf is not None
        dense = np.hstack([emb, self.KNN_SCALE * rates]).astype(np.float32)
        return sparse.hstack([self.tfidf.transform(prompts), sparse.csr_matrix(dense)]).tocsr()

    def fit(self, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> None:
        emb = _require(emb, self.name)
        self.tfidf = Tfidf.fit(prompts, min_df=self.min_df)
        self.knn.fit(emb, weak, strong)
        rates = self.knn.rates(emb, leave_one_out=True)
        self.linear.fit(self._design(prompts, emb, rates), weak, strong)

    def predict(self, prompts: list[str], emb: np.ndarray | None) -> np.ndarray:
        emb = _require(emb, self.name)
        return self.linear.predict(self._design(prompts, emb, self.knn.rates(emb)))

    def state(self) -> State:
        assert self.tfidf is not None
        return {
            "tfidf_terms": np.asarray(self.tfidf.terms()),
            "tfidf_idf": self.tfidf.idf,
            "tfidf_ngrams": np.asarray(self.tfidf.ngrams),
            "keys": self.knn.keys.astype(np.float16),
            "outcomes": self.knn.outcomes,
            "k": np.asarray(self.knn.k),
            "coef": self.linear.coef,
            "intercept": self.linear.intercept,
        }

    def load_state(self, state: State) -> None:
        self.tfidf = Tfidf.from_terms([str(t) for t in state["tfidf_terms"]], state["tfidf_idf"],
                                      int(state["tfidf_ngrams"]))
        self.knn.keys = state["keys"].astype(np.float32)
        self.knn.outcomes = state["outcomes"]
        self.knn.k = int(state["k"])
        self.linear.coef, self.linear.intercept = state["coef"], state["intercept"]


class HybridStats(Hybrid):
    """``hybrid`` plus the prompt's shape: length and layout statistics and the structural
    difficulty of a math problem (how many quantities, their size, fractions, percentages, rates,
    units, sentences; :func:`~turnout.routing.features.math_stats`). Generic text properties, no
    prompt- or data-set-specific keys; on GSM8K they add about 0.03 APGR over ``hybrid``."""

    name: ClassVar[str] = "hybrid-stats"

    def _design(self, prompts: list[str], emb: np.ndarray, rates: np.ndarray) -> sparse.csr_matrix:
        assert self.tfidf is not None
        stats = np.hstack([stats_matrix(prompts), math_stats_matrix(prompts)])
        dense = np.hstack([emb, self.KNN_SCALE * rates, stats]).astype(np.float32)
        return sparse.hstack([self.tfidf.transform(prompts), sparse.csr_matrix(dense)]).tocsr()


def _inner_folds(prompts: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold number per row; rows with the same prompt text share a fold."""
    _, inverse = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
    order = np.random.default_rng(seed).permutation(int(inverse.max()) + 1)
    fold_of_prompt = np.empty(len(order), dtype=int)
    fold_of_prompt[order] = np.arange(len(order)) % folds
    return fold_of_prompt[inverse]


class Stacked:
    """Stacking: the three base models' outputs, plus the prompt's shape, into a final regression.

    Base models: TF-IDF logistic regressions, MiniLM logistic regressions and kNN neighbour rates,
    each giving ``(P(strong right), P(weak right))``. The meta model is the usual pair of logistic
    regressions over those six probabilities, the three expected gains, and the text and math
    statistics. Its training inputs are out-of-fold: an inner 5-fold split of the training rows
    (over distinct prompts) so the meta model learns how far to trust each base model on prompts
    it did not see. The base models are then refit on all training rows for prediction.
    """

    name: ClassVar[str] = "stacked"
    uses_embeddings: ClassVar[bool] = True
    INNER_FOLDS = 5

    def __init__(self, c_tfidf: float = 0.3, c_emb: float = 1.0, c_meta: float = 1.0, k: int = 50) -> None:
        self.tfidf: Tfidf | None = None
        self.text = LinearPair(c=c_tfidf)
        self.emb = LinearPair(c=c_emb)
        self.knn = NeighbourRates(k=k)
        self.meta = LinearPair(c=c_meta)

    @staticmethod
    def _probs(linear: LinearPair, x: sparse.spmatrix | np.ndarray) -> np.ndarray:
        return _sigmoid(np.asarray(x @ linear.coef.T) + linear.intercept)

    def _fit_bases(self, prompts: list[str], emb: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> None:
        self.tfidf = Tfidf.fit(prompts, min_df=2)
        self.text.fit(self.tfidf.transform(prompts), weak, strong)
        self.emb.fit(emb, weak, strong)
        self.knn.fit(emb, weak, strong)

    def _base_outputs(self, prompts: list[str], emb: np.ndarray) -> np.ndarray:
        assert self.tfidf is not None
        return np.hstack(
            [self._probs(self.text, self.tfidf.transform(prompts)), self._probs(self.emb, emb), self.knn.rates(emb)]
        )

    @staticmethod
    def _meta_design(prompts: list[str], base: np.ndarray) -> np.ndarray:
        gains = base[:, 0::2] - base[:, 1::2]
        return np.hstack([base, gains, stats_matrix(prompts), math_stats_matrix(prompts)]).astype(np.float32)

    def fit(self, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> None:
        emb = _require(emb, self.name)
        weak, strong = np.asarray(weak), np.asarray(strong)
        fold = _inner_folds(prompts, self.INNER_FOLDS, seed=1)
        base = np.zeros((len(prompts), 6), dtype=np.float32)
        for f in range(self.INNER_FOLDS):
            train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            if len(test) == 0 or len(train) == 0:
                continue
            self._fit_bases([prompts[i] for i in train], emb[train], weak[train], strong[train])
            base[test] = self._base_outputs([prompts[i] for i in test], emb[test])
        self._fit_bases(prompts, emb, weak, strong)
        self.meta.fit(self._meta_design(prompts, base), weak, strong)

    def predict(self, prompts: list[str], emb: np.ndarray | None) -> np.ndarray:
        emb = _require(emb, self.name)
        return self.meta.predict(self._meta_design(prompts, self._base_outputs(prompts, emb)))

    def state(self) -> State:
        assert self.tfidf is not None
        return {
            "tfidf_terms": np.asarray(self.tfidf.terms()),
            "tfidf_idf": self.tfidf.idf,
            "tfidf_ngrams": np.asarray(self.tfidf.ngrams),
            "text_coef": self.text.coef,
            "text_intercept": self.text.intercept,
            "emb_coef": self.emb.coef,
            "emb_intercept": self.emb.intercept,
            "keys": self.knn.keys.astype(np.float16),
            "outcomes": self.knn.outcomes,
            "k": np.asarray(self.knn.k),
            "coef": self.meta.coef,
            "intercept": self.meta.intercept,
        }

    def load_state(self, state: State) -> None:
        self.tfidf = Tfidf.from_terms([str(t) for t in state["tfidf_terms"]], state["tfidf_idf"],
                                      int(state["tfidf_ngrams"]))
        self.text.coef, self.text.intercept = state["text_coef"], state["text_intercept"]
        self.emb.coef, self.emb.intercept = state["emb_coef"], state["emb_intercept"]
        self.knn.keys = state["keys"].astype(np.float32)
        self.knn.outcomes = state["outcomes"]
        self.knn.k = int(state["k"])
        self.meta.coef, self.meta.intercept = state["coef"], state["intercept"]


FAMILIES: dict[str, type[Scorer]] = {
    TfidfLR.name: TfidfLR,
    EmbeddingKNN.name: EmbeddingKNN,
    EmbeddingLR.name: EmbeddingLR,
    Hybrid.name: Hybrid,
    HybridStats.name: HybridStats,
    Stacked.name: Stacked,
}


def make_scorer(family: str, **params: float) -> Scorer:
    """A new, unfitted scorer of ``family``; ``params`` are its constructor's (e.g. ``c``, the
    inverse regularisation strength of its logistic regressions). Only fitting reads them: an
    artifact stores the fitted arrays, so loading needs the family alone."""
    try:
        cls: Any = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown router family {family!r}: choose from {', '.join(FAMILIES)}") from None
    scorer: Scorer = cls(**params)
    return scorer
