"""The learned router: one score, P(strong model needed), and a calibrated threshold.

Usage at request time::

    router = LearnedRouter.load(".turnout/routers/mmlu-hybrid.npz")
    decision = router.decide(prompt)          # RouterVerdict(escalate, score, threshold)

The artifact is one ``.npz`` file (no pickles): the fitted arrays of the model family and a JSON
metadata record (format version, family, features, embedding model and its sha256, training
data sha256, creation time, cross-validated metrics, threshold and the target it was calibrated
to). :func:`train_router` builds one: cross-validated scores give honest metrics and the
threshold; then the family is refit on all rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from turnout.embedding.embeddings import DEFAULT_EMBEDDING, EMBEDDINGS, Encoder
from turnout.routing.calibration import threshold_for_escalation, threshold_for_quality
from turnout.routing.scorers import Scorer, make_scorer

ARTIFACT_FORMAT = "turnout.router/1"
DEFAULT_ARTIFACT_DIR = Path(".turnout") / "routers"
# What a router reads of a prompt longer than the embedding window (``embeddings.fit_window``):
# artifacts written before the key existed read the head only.
LONG_TEXT = "head-tail"
# A router's scores on an evaluation slice must spread at least this much (standard deviation;
# scores live in [0, 1] and useful routers here spread 0.03-0.2): below it every prompt gets about
# the same score, the router sends all or nothing to the strong engine and its APGR is noise.
MIN_SCORE_SPREAD = 1e-3


class DegenerateRouter(ValueError):
    """The router gives (nearly) one score to every prompt of an evaluation slice."""


def check_spread(scores: np.ndarray, where: str, minimum: float = MIN_SCORE_SPREAD) -> float:
    """The scores' standard deviation; :class:`DegenerateRouter` when it is below ``minimum``."""
    s = np.asarray(scores, dtype=float)
    spread = float(s.std()) if s.size else 0.0
    if spread < minimum:
        raise DegenerateRouter(
            f"degenerate router on {where}: its scores have a spread (std) of {spread:.2g} over {s.size} prompts "
            f"(minimum {minimum:g}), i.e. about one score for every prompt. Common causes: the prompts share a long "
            "fixed preamble and the embedding reads only its window (use an artifact fitted with head-tail "
            "embeddings), or the training labels are all alike")
    return spread


class Embedder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class RouterVerdict:
    """The learned router's answer for one prompt."""

    escalate: bool
    score: float
    threshold: float


def data_fingerprint(prompts: list[str], weak: np.ndarray, strong: np.ndarray) -> str:
    """sha256 over the training rows (prompt text and both outcomes), independent of file layout."""
    digest = hashlib.sha256()
    for prompt, w, s in zip(prompts, np.asarray(weak, float), np.asarray(strong, float), strict=True):
        digest.update(hashlib.sha256(prompt.encode()).digest())
        digest.update(f"|{w:.6g}|{s:.6g}\n".encode())
    return digest.hexdigest()


def make_embedder(kind: str = DEFAULT_EMBEDDING, cache_dir: Path | None = None, long_text: str = LONG_TEXT) -> Encoder:
    """``minilm``: the full MiniLM forward pass in numpy; ``minilm-static``: its distilled token
    table (kept in ``cache_dir``, default .turnout/cache); ``minilm-onnx`` / ``minilm-onnx-fp32``:
    the full model in onnxruntime, int8 / float32 (built once into the model cache). ``long_text``:
    what of a prompt longer than the window is read (``head-tail`` for routers, see LONG_TEXT)."""
    from turnout.embedding.embeddings import MiniLMEncoder, StaticMiniLM

    if kind == "minilm":
        return MiniLMEncoder(long_text=long_text)
    if kind == "minilm-static":
        return StaticMiniLM(cache_dir=cache_dir, long_text=long_text)
    if kind in ("minilm-onnx", "minilm-onnx-fp32"):
        from turnout.embedding.minilm_onnx import OnnxMiniLM

        return OnnxMiniLM(int8=kind == "minilm-onnx", long_text=long_text)
    raise ValueError(f"unknown embedding {kind!r}: choose from {', '.join(EMBEDDINGS)}")


class LearnedRouter:
    """A fitted scorer plus a threshold; ``score >= threshold`` escalates to the strong model."""

    def __init__(
        self,
        scorer: Scorer,
        threshold: float,
        metadata: dict[str, Any] | None = None,
        embedder: Embedder | Callable[[], Embedder] | None = None,
    ) -> None:
        self.scorer = scorer
        self.threshold = float(threshold)
        self.metadata = dict(metadata or {})
        self._embedder = embedder

    @property
    def family(self) -> str:
        return self.scorer.name

    def _embed(self, prompts: list[str]) -> np.ndarray | None:
        if not self.scorer.uses_embeddings:
            return None
        if self._embedder is None:
            self._embedder = make_embedder(str(self.metadata.get("embedding") or DEFAULT_EMBEDDING),
                                           long_text=str(self.metadata.get("embedding_long_text") or "head"))
        elif callable(self._embedder) and not hasattr(self._embedder, "encode"):
            self._embedder = self._embedder()
        return self._embedder.encode(prompts)  # type: ignore[union-attr]

    def warm_up(self) -> None:
        """Load the embedding model now rather than on the first request."""
        self.score("warm up")

    def score_batch(self, prompts: list[str]) -> np.ndarray:
        return self.scorer.predict(list(prompts), self._embed(list(prompts)))

    def score(self, prompt: str) -> float:
        return float(self.score_batch([prompt])[0])

    def decide(self, prompt: str) -> RouterVerdict:
        s = self.score(prompt)
        return RouterVerdict(escalate=s >= self.threshold, score=s, threshold=self.threshold)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.metadata, "format": ARTIFACT_FORMAT, "family": self.family, "threshold": self.threshold}
        arrays: dict[str, Any] = {f"state.{k}": v for k, v in self.scorer.state().items()}
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            np.savez_compressed(handle, __meta__=np.asarray(json.dumps(meta, sort_keys=True)), **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | Callable[[], Embedder] | None = None) -> LearnedRouter:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no router artifact")
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["__meta__"]))
                state = {k.removeprefix("state."): npz[k] for k in npz.files if k.startswith("state.")}
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: not a turnout router artifact ({exc})") from exc
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"{path}: artifact format {meta.get('format')!r}, this turnout reads {ARTIFACT_FORMAT!r}")
        scorer = make_scorer(str(meta["family"]))
        scorer.load_state(state)
        return cls(scorer, float(meta["threshold"]), meta, embedder)


def embedding_metadata(scorer: Scorer, embedding: str = DEFAULT_EMBEDDING) -> dict[str, Any]:
    if not scorer.uses_embeddings:
        return {"embedding": None, "embedding_model": None}
    from turnout.embedding.embeddings import MODEL_NAME, weights_sha256
    from turnout.weights import minilm_dir

    return {"embedding": embedding, "embedding_model": MODEL_NAME, "embedding_sha256": weights_sha256(minilm_dir()),
            "embedding_long_text": LONG_TEXT}


def features_of(scorer: Scorer) -> list[str]:
    names = {
        "tfidf-lr": ["tfidf-words"],
        "emb-knn": ["minilm-knn"],
        "emb-lr": ["minilm"],
        "hybrid": ["tfidf-words", "minilm", "minilm-knn"],
        "hybrid-stats": ["tfidf-words", "minilm", "minilm-knn", "text-stats", "math-stats"],
        "stacked": ["tfidf-words", "minilm", "minilm-knn", "text-stats", "math-stats"],
    }
    return names.get(scorer.name, [scorer.name])


def calibrate(
    oof_scores: np.ndarray,
    weak: np.ndarray,
    strong: np.ndarray,
    target_escalation: float | None = None,
    target_quality: float | None = None,
) -> tuple[float, dict[str, Any]]:
    """Threshold and target record from out-of-fold scores; exactly one target must be given."""
    if (target_escalation is None) == (target_quality is None):
        raise ValueError("give exactly one of target_escalation or target_quality")
    if target_escalation is not None:
        return threshold_for_escalation(oof_scores, target_escalation), {
            "kind": "escalation_rate",
            "value": target_escalation,
        }
    assert target_quality is not None
    return threshold_for_quality(oof_scores, weak, strong, target_quality), {
        "kind": "quality",
        "value": target_quality,
    }


def build_metadata(
    scorer: Scorer,
    prompts: list[str],
    weak: np.ndarray,
    strong: np.ndarray,
    dataset: str,
    metrics: dict[str, Any],
    target: dict[str, Any],
    oof_scores: np.ndarray,
    threshold: float,
    embedding: str = DEFAULT_EMBEDDING,
) -> dict[str, Any]:
    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_family": scorer.name,
        "features": [f.replace("minilm", embedding) for f in features_of(scorer)],
        **embedding_metadata(scorer, embedding),
        "training_data": {"name": dataset, "rows": len(prompts), "sha256": data_fingerprint(prompts, weak, strong)},
        "metrics": metrics,
        "target": target,
        "cv_escalation_rate_at_threshold": float((oof_scores >= threshold).mean()),
        "score": "(1 + P(strong right) - P(weak right)) / 2: the strong model's expected gain in [0, 1]",
    }


def fit_final(family: str, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> Scorer:
    scorer = make_scorer(family)
    scorer.fit(prompts, emb, weak, strong)
    return scorer
