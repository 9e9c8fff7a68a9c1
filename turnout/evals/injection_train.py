"""A logistic head on the injection guard's window embeddings, fitted as a multiple-instance problem.

The shipped model is built by ``injection_finetune`` (the encoder fine-tuned end to end, its head
and thresholds). This module keeps the head fit on fixed embeddings that ``turnout eval guards
--injection FILE`` uses to show what a head refitted on a file's training split would do
(``fit_head``, ``encode_rows``, ``threshold_at``), and the leave-one-source-out helpers it shares.

Fitting: each text is read as windows of its views (``injection.views``); the head is a
logistic regression (scikit-learn, L2, C=``C``) over window embeddings: an attack is represented
by its most suspicious window, a benign text by all of its windows (each text weighs 1 in all);
two rounds re-pick the windows. Embeddings are cached in ``$TURNOUT_GUARDS_CACHE`` (default
``/tmp/turnout-guards-cache``), keyed by the encoder's weights and the window size.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.evals.injection_data import Row
from turnout.guards.injection import (
    STRIDE,
    WINDOW,
    InjectionHead,
    WindowEncoder,
    combine,
    views,
)

C = 1.0
ROUNDS = 2
SPLIT_SEED = 13
HOLDOUT_SHARE = 0.25


def stratified_split(labels: Sequence[int], test_share: float = HOLDOUT_SHARE,
                     seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    from turnout.guards.calibration import stratified_split as split

    return split(labels, test_share, seed)


# ---------------------------------------------------------------- embeddings, cached


class EmbeddingCache:
    """Window embeddings per view text, kept in one .npz per (weights, window) under ``folder``."""

    def __init__(self, encoder: WindowEncoder | None = None, folder: Path | None = None) -> None:
        self.encoder = encoder or WindowEncoder()
        folder = folder or Path(os.environ.get("TURNOUT_GUARDS_CACHE", "/tmp/turnout-guards-cache"))
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"inj-{self.encoder.fingerprint[:12]}-w{WINDOW}s{STRIDE}.npz"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            import numpy as np

            with np.load(self.path) as z:
                self.data = {k: z[k] for k in z.files}
        self._dirty = 0

    def get(self, text: str) -> Any:
        k = hashlib.sha1(text.encode("utf-8")).hexdigest()
        if k not in self.data:
            self.data[k] = self.encoder.encode(text)
            self._dirty += 1
            if self._dirty >= 500:
                self.save()
        return self.data[k]

    def save(self) -> None:
        import numpy as np

        if self._dirty:
            tmp = self.path.with_suffix(".tmp.npz")
            np.savez(tmp, **self.data)
            os.replace(tmp, self.path)
            self._dirty = 0


@dataclass
class Encoded:
    """Per text: the window embeddings of all its views, and the views (for heuristics)."""
    emb: list[Any]
    texts: list[list[str]]


def encode_rows(rows: Sequence[Row], cache: EmbeddingCache, progress: bool = True) -> Encoded:
    import numpy as np

    embs: list[Any] = []
    texts: list[list[str]] = []
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        vs = views(r.text)
        embs.append(np.concatenate([cache.get(v) for v in vs]))
        texts.append(vs)
        if progress and i % 500 == 499:
            print(f"  encoded {i + 1}/{len(rows)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    cache.save()
    return Encoded(embs, texts)


# ---------------------------------------------------------------- fitting


def _group_weights(rows: Sequence[Row], idx: Sequence[int]) -> dict[int, float]:
    """Per text: 1 / (texts of its source and class), so every (source, class) weighs the same."""
    counts: dict[tuple[str, int], int] = {}
    for i in idx:
        counts[(rows[i].source, rows[i].label)] = counts.get((rows[i].source, rows[i].label), 0) + 1
    n_groups = len(counts)
    return {i: len(idx) / n_groups / counts[(rows[i].source, rows[i].label)] for i in idx}


def fit_head(rows: Sequence[Row], enc: Encoded, idx: Sequence[int], *, c: float = C,
             rounds: int = ROUNDS) -> InjectionHead:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    w_text = _group_weights(rows, idx)
    head: InjectionHead | None = None
    for _ in range(rounds + 1):
        xs: list[Any] = []
        ys: list[int] = []
        ws: list[float] = []
        for i in idx:
            e = enc.emb[i]
            if rows[i].label:
                if head is None:
                    pick = e[:1]  # first window of the text itself
                else:
                    pick = e[[int(np.argmax(head.window_scores(e)))]]
                xs.append(pick)
                ys.append(1)
                ws.append(w_text[i])
            else:
                xs.append(e)
                ys.extend([0] * len(e))
                ws.extend([w_text[i] / len(e)] * len(e))
        lr = LogisticRegression(C=c, max_iter=3000)
        lr.fit(np.concatenate(xs), np.asarray(ys), sample_weight=np.asarray(ws))
        head = InjectionHead([float(x) for x in lr.coef_.ravel()], float(lr.intercept_[0]), 0.5, 0.5)
    assert head is not None
    return head


def text_scores(head: InjectionHead, enc: Encoded, idx: Sequence[int]) -> list[float]:
    """Each text's score as the guard computes it: its best window, or 1.0 where a heuristic fires."""
    return [combine(list(head.window_scores(enc.emb[i])), enc.texts[i]) for i in idx]


def threshold_at(neg: Sequence[float], fpr: float) -> float:
    from turnout.guards.calibration import threshold_for_fpr

    return float(min(0.999, max(0.05, threshold_for_fpr(neg, fpr))))
