"""K-fold cross-validated router scores: every prompt is scored by a router that never saw it.

Folds are drawn over distinct prompt texts (a prompt that appears twice lands in one fold), with
a fixed seed, so a memorising router cannot score its own training rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from turnout.evals.datasets import RoutingDataset
from turnout.routing.scorers import Scorer

Fold = tuple[np.ndarray, np.ndarray]


def prompt_folds(prompts: list[str], folds: int, seed: int) -> list[Fold]:
    """(train, test) index pairs; rows with identical prompt text share a fold."""
    if folds < 2:
        raise ValueError("need at least 2 folds")
    unique, inverse = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
    if len(unique) < folds:
        raise ValueError(f"{len(unique)} distinct prompts cannot fill {folds} folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_prompt = np.empty(len(unique), dtype=int)
    fold_of_prompt[order] = np.arange(len(unique)) % folds
    fold_of_row = fold_of_prompt[inverse]
    rows = np.arange(len(prompts))
    return [(rows[fold_of_row != f], rows[fold_of_row == f]) for f in range(folds)]


def check_disjoint(prompts: list[str], train: np.ndarray, test: np.ndarray) -> None:
    """Raise if any test prompt text is also a training prompt (the leakage guard)."""
    seen = {prompts[i] for i in train}
    leaked = sum(prompts[i] in seen for i in test)
    if leaked:
        raise AssertionError(f"{leaked} test prompts also appear in the training fold")


def cross_val_scores(
    make: Callable[[], Scorer],
    data: RoutingDataset,
    emb: np.ndarray | None,
    folds: int = 5,
    seed: int = 0,
    progress: Callable[[Iterator[Fold], int], Iterator[Fold]] | None = None,
    inputs: list[str] | None = None,
) -> np.ndarray:
    """Out-of-fold scores for every prompt of ``data``.

    Folds always follow ``data.prompts``; ``inputs`` (one text per row, e.g. the weak model's
    responses for a post-generation scorer) replaces the prompts as what the scorer reads.
    """
    texts = data.prompts if inputs is None else inputs
    if len(texts) != len(data):
        raise ValueError(f"{len(texts)} inputs for {len(data)} rows")
    scores = np.full(len(data), np.nan)
    splits = prompt_folds(data.prompts, folds, seed)
    iterator: Iterator[Fold] = iter(splits)
    if progress is not None:
        iterator = progress(iterator, len(splits))
    for train, test in iterator:
        check_disjoint(data.prompts, train, test)
        scorer = make()
        scorer.fit(
            [texts[i] for i in train],
            None if emb is None else emb[train],
            data.weak[train],
            data.strong[train],
        )
        scores[test] = scorer.predict([texts[i] for i in test], None if emb is None else emb[test])
    if np.isnan(scores).any():
        raise AssertionError("some prompts were not scored by any fold")
    return scores
