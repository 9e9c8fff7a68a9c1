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

Each family's fitted state is a flat dict of numpy arrays so artifacts need no pickle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
from scipy import sparse

from turnout.routing.features import Tfidf

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
    return (1.0 + np.clip(p_strong, 0.0, 1.0) - np.clip(p_weak, 0.0, 1.0)) / 2.0


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


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
        self.tfidf = Tfidf.from_terms([str(t) for t in state["tfidf_terms"]], state["tfidf_idf"], int(state["tfidf_ngrams"]))
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
        self.tfidf = Tfidf.from_terms([str(t) for t in state["tfidf_terms"]], state["tfidf_idf"], int(state["tfidf_ngrams"]))
        self.knn.keys = state["keys"].astype(np.float32)
        self.knn.outcomes = state["outcomes"]
        self.knn.k = int(state["k"])
        self.linear.coef, self.linear.intercept = state["coef"], state["intercept"]


FAMILIES: dict[str, Callable[[], Scorer]] = {
    TfidfLR.name: TfidfLR,
    EmbeddingKNN.name: EmbeddingKNN,
    EmbeddingLR.name: EmbeddingLR,
    Hybrid.name: Hybrid,
}


def make_scorer(family: str) -> Scorer:
    try:
        return FAMILIES[family]()
    except KeyError:
        raise ValueError(f"unknown router family {family!r}: choose from {', '.join(FAMILIES)}") from None
