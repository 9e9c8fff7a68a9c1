"""The router that learns the user's traffic (issue 18): labels, judges, shadow calls over real
sockets, retraining behind a promotion gate, history and rollback, the threshold tracker, the
degenerate-router check, head-tail embeddings and the replay simulator."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.runcli import run_cli
from turnout.embedding.embeddings import HEAD_TOKENS, fit_window
from turnout.evals.datasets import RoutingDataset
from turnout.evals.replay import ReplayConfig, replay
from turnout.evals.retrain import label_times, recent_split, retrain, traffic_dataset, unseen_by
from turnout.evals.routing_metrics import evaluate_scores
from turnout.evals.selection import gate
from turnout.ledger.labels import Label, SQLiteLabels
from turnout.routing.artifacts import Registry, load_serving, resolve
from turnout.routing.judge import ExactAnswer, FirstOf, LabelJudge, LLMJudge, SchemaCheck, final_answer
from turnout.routing.learned import DegenerateRouter, LearnedRouter, check_spread, fit_final
from turnout.routing.shadow import Shadow, ShadowPolicy, ShadowSampler, labelable_prompt, pick_for_shadow
from turnout.routing.threshold import ThresholdTracker

REPO = Path(__file__).resolve().parents[1]
EASY = ["capital", "colour", "animal", "river", "city", "fruit", "planet", "song"]
HARD = ["integral", "theorem", "eigenvalue", "proof", "tensor", "lemma", "manifold", "topology"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def write_outcomes(path: Path, data: RoutingDataset) -> None:
    """``data`` as an outcome CSV (prompt, weak_correct, strong_correct), the format the CLI reads."""
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["prompt", "weak_correct", "strong_correct"])
        w.writerows(zip(data.prompts, data.weak.astype(int), data.strong.astype(int), strict=True))


def synthetic(n: int = 400, seed: int = 0, flip: bool = False, tag: str = "question") -> RoutingDataset:
    """Hard topics defeat the weak model; ``flip`` makes the easy ones hard instead."""
    rng = np.random.default_rng(seed)
    prompts, weak, strong = [], [], []
    for i in range(n):
        hard = rng.random() < 0.4
        words = rng.choice(HARD if hard else EASY, size=3)
        prompts.append(f"{tag} {seed}-{i}: explain the {' and the '.join(words)} please")
        weak.append(float(rng.random() < ((0.9 if hard else 0.15) if flip else (0.15 if hard else 0.9))))
        strong.append(float(rng.random() < 0.95))
    return RoutingDataset("synthetic", prompts, np.array(weak), np.array(strong))


def router_on(data: RoutingDataset, escalate: float = 0.3) -> LearnedRouter:
    scorer = fit_final("tfidf-lr", data.prompts, None, data.weak, data.strong)
    return LearnedRouter(scorer, float(np.quantile(scorer.predict(data.prompts, None), 1 - escalate)),
                         {"training_data": {"name": data.name}})


def label_rows(data: RoutingDataset, source: str = "shadow") -> list[dict[str, object]]:
    return [{"prompt": p, "weak_score": w, "strong_score": s, "source": source}
            for p, w, s in zip(data.prompts, data.weak, data.strong, strict=True)]


# --- item 5: embed what matters, catch degenerate routers -----------------------------------

def test_fit_window_keeps_head_and_tail() -> None:
    ids = [101, *range(1000, 1600), 102]  # [CLS] 600 tokens [SEP]
    head = fit_window(ids, 256, "head")
    both = fit_window(ids, 256, "head-tail")
    assert len(head) == len(both) == 256
    assert head[0] == both[0] == 101 and head[-1] == both[-1] == 102
    assert head[1:-1] == list(range(1000, 1254))
    assert both[1:1 + HEAD_TOKENS] == list(range(1000, 1000 + HEAD_TOKENS))
    assert both[-2] == 1599  # the question at the end is read
    assert fit_window(ids[:100], 256, "head-tail") == ids[:100]


def test_long_preamble_no_longer_collapses_embeddings(caplog: pytest.LogCaptureFixture) -> None:
    from turnout.embedding.embeddings import MiniLMEncoder
    from turnout.weights import minilm_available as embeddings_available

    if not embeddings_available():
        pytest.skip("MiniLM weights not installed")
    preamble = " ".join(f"Example {i}: the answer to question number {i} is {i * 7}." for i in range(40))
    assert len(preamble) > 1200
    prompts = [f"{preamble}\nQuestion: what is the capital of France?",
               f"{preamble}\nQuestion: integrate x squared times the sine of x."]
    head = MiniLMEncoder(long_text="head").encode(prompts)
    with caplog.at_level(logging.WARNING, logger="turnout.embeddings"):
        both = MiniLMEncoder(long_text="head-tail").encode(prompts)
    assert float(head[0] @ head[1]) > 0.9999  # the silent failure: one embedding for both
    assert float(both[0] @ both[1]) < 0.97
    assert "2 of 2 texts are longer than 256 tokens" in caplog.text


def test_check_spread_refuses_a_constant_router() -> None:
    with pytest.raises(DegenerateRouter, match="degenerate router on the slice"):
        check_spread(np.full(50, 0.62), "the slice")
    assert check_spread(np.linspace(0.4, 0.6, 50), "the slice") > 0.05


def test_save_artifact_refuses_a_degenerate_router(tmp_path: Path) -> None:
    path = tmp_path / "same.csv"
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["prompt", "weak_correct", "strong_correct"])
        for i in range(60):  # the words they share carry no label; the rest are unique
            w.writerow([f"the same fixed preamble and question id{i}", i % 2, 1])
    out = run_cli("eval", "router", "--dataset", str(path), "--router", "tfidf-lr", "--save-artifact",
                  str(tmp_path / "r.npz"), "--target-escalation", "0.2", env=ENV, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "degenerate router" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r.npz").exists()


# --- item 7: evaluate an artifact on any file ------------------------------------------------

def test_eval_artifact_on_another_dataset(tmp_path: Path) -> None:
    router = router_on(synthetic(400, seed=1), escalate=0.2)
    artifact = router.save(tmp_path / "r.npz")
    other = synthetic(300, seed=2)
    path = tmp_path / "other.csv"
    write_outcomes(path, other)
    out = run_cli("eval", "router", "--artifact", str(artifact), "--dataset", str(path), "--json", env=ENV)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    direct = evaluate_scores(router.score_batch(other.prompts), other.weak, other.strong)
    assert report["n"] == 300 and report["apgr"] == pytest.approx(direct.apgr)
    assert report["apgr"] > 0.65 and report["degenerate"] is None
    assert 0.1 < report["escalation_at_threshold"] < 0.5


# --- item 6: the threshold tracks the configured share ---------------------------------------

def test_threshold_tracker_holds_the_escalation_share_on_foreign_traffic() -> None:
    rng = np.random.default_rng(0)
    tracker = ThresholdTracker(window=500, min_samples=50)
    tracker.configure("auto", 0.2, artifact_threshold=0.55)
    served = []
    for s in rng.normal(0.7, 0.05, 3000):  # foreign traffic: nearly all above the artifact's threshold
        t = tracker.threshold("auto")
        served.append(s >= t)
        tracker.observe("auto", float(s))
    state = tracker.snapshot()["auto"]
    assert state.escalation_share > 0.95  # the artifact's fixed threshold would escalate almost everything
    assert abs(np.mean(served[500:]) - 0.2) < 0.03
    assert abs(state.served_share - 0.2) < 0.04
    assert state.threshold > 0.7 and state.artifact_threshold == 0.55
    assert tracker.threshold("unknown", default=0.4) == 0.4


# --- labels: store, judges --------------------------------------------------------------------

def test_label_store_appends_and_filters(tmp_path: Path) -> None:
    store = SQLiteLabels(tmp_path / "t.sqlite")
    store.add_sync(Label("acme", "auto", "what is <PERSON_1a2b>'s age", "small", "big", "shadow", "exact-answer",
                         0.0, 1.0, "req-1", 0.002, ts=100.0))
    store.add_sync(Label("acme", "other", "p", "small", "big", "cascade", "cascade:confidence", 0.0, None, None))
    rows = store.rows("auto")
    assert len(rows) == 1 and rows[0]["prompt"] == "what is <PERSON_1a2b>'s age"
    assert rows[0]["source"] == "shadow" and rows[0]["weak_score"] == 0.0 and len(rows[0]["prompt_sha256"]) == 64
    assert len(store.rows()) == 2 and store.rows(since=101.0)[0]["alias"] == "other"
    with pytest.raises(ValueError, match="source"):
        Label("acme", "auto", "p", "a", "b", "guess", "x", 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Label("acme", "auto", "p", "a", "b", "shadow", "x", 2.0, 1.0)
    assert SQLiteLabels(tmp_path / "t.sqlite").rows("auto")[0]["request_id"] == "req-1"  # migrations re-run safely


def test_label_store_postgres(tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    from turnout.ledger.labels import PostgresLabels

    dsn = os.environ.get("TURNOUT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    schema = f"learnloop_{uuid.uuid4().hex[:8]}"
    try:
        store = PostgresLabels(dsn, schema)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL: {exc}")
    try:
        store.add_sync(Label("acme", "auto", "p1", "small", "big", "shadow", "labels", 1.0, 1.0))
        store.add_sync(Label("acme", "auto", "p2", "small", "big", "feedback", "user", 0.25, None))
        rows = store.rows("auto")
        assert [r["prompt"] for r in rows] == ["p1", "p2"] and rows[1]["strong_score"] is None
        assert traffic_dataset(rows).strong.tolist() == [1.0, 1.0]
        # the gateway's scheduled fit reads these labels with the DSN in its environment, never in its argv
        from turnout.config import RetrainConfig, RouteConfig, StorageConfig
        from turnout.routing.upkeep import fit_command, fit_env

        storage = StorageConfig(postgres_dsn=dsn, postgres_schema=schema)
        registry = tmp_path / "auto"
        cmd = fit_command("auto", RouteConfig(chain=["a", "b"], strategy="learned", router=str(registry)),
                          RetrainConfig(min_new_labels=1), storage)
        assert dsn not in " ".join(cmd) and fit_env(storage)["TURNOUT_DSN"] == dsn
        out = subprocess.run(cmd, env=fit_env(storage), capture_output=True, text=True, timeout=120)
        assert out.returncode == 3 and "2 labels" in out.stdout + out.stderr, out.stdout + out.stderr
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_judges() -> None:
    assert final_answer("so 3 + 4 = 7 apples\n#### 1,007") == "1007"
    assert final_answer("The answer is 12.0.") == "12"
    run = asyncio.run
    assert run(ExactAnswer().judge("q", "it is 12", "12")).weak_score == 1.0  # type: ignore[union-attr]
    assert run(ExactAnswer().judge("q", "it is 13", "#### 12")).weak_score == 0.0  # type: ignore[union-attr]
    assert run(ExactAnswer().judge("q", "no idea", "12")) is None
    req = {"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}}
    v = run(SchemaCheck().judge("q", '{"town": "Paris"}', '{"city": "Paris"}', req))
    assert v is not None and (v.weak_score, v.strong_score) == (0.0, 1.0)
    assert run(SchemaCheck().judge("q", "{}", "{}", {})) is None

    async def says(text: str) -> str:
        assert "rubric" not in text and "Answer A:\nfour" in text
        return "VERDICT: WORSE"

    llm = LLMJudge("judge-route", says)
    v = run(FirstOf(SchemaCheck(), ExactAnswer(), llm).judge("2+2?", "four", "it is four"))
    assert v is not None and v.weak_score == 0.0 and v.judge == "llm:judge-route:rubric-v1"


# --- shadow evaluation over a real socket ----------------------------------------------------

def test_shadow_labels_over_a_real_socket_within_budget(tmp_path: Path) -> None:
    from turnout.engines.openai_http import OpenAIEngine, OpenAIEngineConfig
    from turnout.protocol import ChatRequest
    from turnout.testing.procs import start_server

    data = synthetic(40, seed=3)
    outcomes = {p: (w, s) for p, w, s in zip(data.prompts, data.weak, data.strong, strict=True)}
    store = SQLiteLabels(tmp_path / "t.sqlite")

    async def main(url: str) -> Shadow:
        engine = OpenAIEngine("big", OpenAIEngineConfig(dialect="openai", base_url=url + "/v1", model="fake-echo",
                                                        locality="remote"))
        await engine.start()
        seen: list[str] = []

        async def judge_reads_the_answer(prompt: str, weak: str, strong: str, request: object = None) -> object:
            seen.append(strong)
            return await LabelJudge(outcomes).judge(prompt, weak, strong)

        judge = LabelJudge(outcomes)
        judge.judge = judge_reads_the_answer  # type: ignore[method-assign]
        shadow = Shadow(store, judge, {"auto": ShadowPolicy(share=1.0, daily_budget_usd=0.05, sampling="uniform")},
                        seed=0)
        for i, prompt in enumerate(data.prompts[:8]):
            protected = prompt if i != 3 else None

            async def call_strong(p: str = prompt) -> tuple[str, float]:
                result = await engine.chat(ChatRequest.model_validate(
                    {"model": "auto", "messages": [{"role": "user", "content": p}]}))
                return result.content or "", 0.01

            shadow.maybe_schedule(tenant="acme", alias="auto", request_id=f"r{i}",
                                  prompt=labelable_prompt(prompt, protected, safe_for_remote=i != 3),
                                  request=None, weak_engine="small", strong_engine="big", weak_answer="w",
                                  score=0.4, threshold=0.5, estimated_cost=0.01, call_strong=call_strong)
        await shadow.drain()
        await engine.close()
        assert seen and all(s.startswith("echo: ") for s in seen)  # the strong answers came over HTTP
        return shadow

    with start_server("turnout.testing.upstream") as proc:
        shadow = asyncio.run(main(proc.url))
    rows = store.rows("auto")
    assert len(rows) == 5  # budget 0.05 at 0.01 a call; request 3 (sensitive) never considered
    assert shadow.stats.over_budget["auto"] == 2 and shadow.stats.considered["auto"] == 7
    assert {r["request_id"] for r in rows} == {"r0", "r1", "r2", "r4", "r5"}
    for r in rows:
        assert (r["weak_score"], r["strong_score"]) == outcomes[r["prompt"]] and r["source"] == "shadow"
    assert shadow.stats.spent_usd == pytest.approx(0.05)


def test_uncertainty_sampling_prefers_the_threshold() -> None:
    rng = np.random.default_rng(0)
    cands = [(s, 0.5) for s in np.linspace(0.0, 0.5, 101)]
    picked = pick_for_shadow(cands, 10, "uncertainty", 0.0, rng)
    assert sorted(picked) == list(range(91, 101))
    assert len(set(pick_for_shadow(cands, 10, "uncertainty", 0.3, rng))) == 10
    sampler = ShadowSampler(0.2, "uncertainty", explore=0.0, seed=0)
    decisions = [(abs(0.5 - s), sampler.decide(float(s), 0.5)) for s in rng.uniform(0, 0.5, 2000)]
    near = [d for dist, d in decisions[100:] if dist < 0.05]
    far = [d for dist, d in decisions[100:] if dist > 0.2]
    assert np.mean(near) > 0.8 and np.mean(far) < 0.05
    assert 0.12 < np.mean([d for _, d in decisions[100:]]) < 0.28


# --- retraining, the gate, the registry ------------------------------------------------------

def test_gate_promotes_a_better_router_and_refuses_a_worse_one() -> None:
    traffic = synthetic(300, seed=4, flip=True)  # the user's traffic: the opposite of the public data
    stale = router_on(synthetic(300, seed=5))
    better = retrain(traffic_dataset(label_rows(traffic)), stale, "tfidf-lr", 0.2)
    assert better.promote, better.reason
    assert better.candidate_metrics.apgr > 0.65 > 0.5 > better.current_metrics.apgr  # type: ignore[union-attr]
    meta = better.candidate.metadata  # type: ignore[union-attr]
    assert meta["training_data"]["labels_by_source"] == {"shadow": 300}
    assert meta["gate"]["rows"] == 300 and meta["gate"]["lower_bound"] > 0  # the stale router saw no traffic
    assert len(meta["training_data"]["sha256"]) == 64 and meta["selection"]["chosen"] == "tfidf-lr"
    worse = retrain(traffic_dataset(label_rows(traffic)), better.candidate, "tfidf-lr", 0.2,
                    warm_start=synthetic(3000, seed=6), times=np.arange(300) + 1000.0)
    assert not worse.promote and "not surely better" in worse.reason  # drowned in public data that says the opposite
    ok = gate(np.linspace(0, 1, 50), None, np.ones(50), np.ones(50))
    assert ok.promote and "no router" in ok.reason


def test_gate_refuses_a_noisy_candidate_and_promotes_a_clearly_better_one() -> None:
    """The newest-quarter gate promoted on noise: a candidate no better than the serving router but
    luckier on one small slice. The bootstrap bound refuses it; a clearly better one passes."""
    rng = np.random.default_rng(3)
    n = 400
    hard = rng.random(n) < 0.4
    weak = (rng.random(n) < np.where(hard, 0.2, 0.9)).astype(float)
    strong = (rng.random(n) < 0.95).astype(float)
    signal = hard + rng.normal(0, 0.8, n)             # a router that knows something
    same = hard + rng.normal(0, 0.8, n)                # another draw of the same skill
    refused = promoted = 0
    for seed in range(20):  # small slices, where one quarter's comparison is a coin toss
        idx = np.random.default_rng(seed).choice(n, 80, replace=False)
        v = gate(same[idx], signal[idx], weak[idx], strong[idx], confidence=0.9, rounds=200, seed=seed)
        refused += not v.promote
        promoted += evaluate_scores(same[idx], weak[idx], strong[idx]).apgr > evaluate_scores(
            signal[idx], weak[idx], strong[idx]).apgr
    assert promoted >= 3          # the old rule (higher APGR on the slice) would have promoted these
    assert refused >= 19          # the bound refuses (nearly) all
    clear = gate(hard + rng.normal(0, 0.1, n), rng.random(n), weak, strong, confidence=0.9)
    assert clear.promote and clear.lower > 0.1, clear.reason
    assert "better" in clear.reason and clear.current is not None and clear.current.apgr < 0.65


def test_family_auto_chooses_by_cross_validation_on_the_labels() -> None:
    """The signal lives only in the embeddings: auto must pick an embedding family; without
    embeddings it chooses among the TF-IDF ones and records every option it tried."""
    rng = np.random.default_rng(5)
    n = 240
    hard = rng.random(n) < 0.5
    prompts = [f"request {i} " + " ".join(rng.choice(EASY + HARD, 4)) for i in range(n)]  # words carry no signal
    vectors = rng.normal(0, 1, (n, 16))
    vectors[:, 0] += np.where(hard, 2.0, -2.0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    weak = (rng.random(n) < np.where(hard, 0.1, 0.9)).astype(float)
    data = RoutingDataset("t", prompts, weak, np.ones(n))
    index = {p: i for i, p in enumerate(prompts)}

    def embed(texts: list[str]) -> np.ndarray:
        return vectors[[index[t] for t in texts]]

    out = retrain(data, None, "auto", 0.2, embed=embed)
    sel = out.provenance["selection"]
    assert sel["asked"] == "auto" and out.promote
    assert out.candidate is not None and out.candidate.family in ("emb-lr", "hybrid-stats"), sel
    best = sel["cv_apgr"][sel["chosen"]]
    assert max(sel["cv_apgr"].values()) == best > 0.6
    assert max(v for k, v in sel["cv_apgr"].items() if k.startswith("tfidf")) < best - 0.05, sel
    text_only = retrain(data, None, "auto", 0.2)
    assert set(text_only.provenance["selection"]["cv_apgr"]) == {"tfidf-lr(c=0.1)", "tfidf-lr(c=0.3)",
                                                                 "tfidf-lr(c=1)"}


def test_learning_defaults_are_the_measured_ones() -> None:
    """Issue 27 item 5: uniform sampling, family auto, a cross-validated gate with a bound."""
    from turnout.config import RetrainConfig, ShadowConfig

    assert ShadowConfig().sampling == "uniform" and ShadowPolicy().sampling == "uniform"
    assert ShadowSampler(0.1).sampling == "uniform" and ReplayConfig().sampling == "uniform"
    from turnout.config import RouteConfig, StorageConfig
    from turnout.routing.upkeep import fit_command

    r = RetrainConfig()
    assert (r.family, r.folds, r.confidence) == ("auto", 5, 0.9) and ReplayConfig().family == "auto"
    route = RouteConfig(chain=["a", "b"], strategy="learned", router="reg")
    cmd = " ".join(fit_command("auto", route, r, StorageConfig()))
    assert "--family auto --folds 5 --confidence 0.9" in cmd and "--embedding" not in cmd
    fast = " ".join(fit_command("auto", route, RetrainConfig(embedding="minilm-onnx"), StorageConfig()))
    assert "--embedding minilm-onnx" in fast


def test_a_promoted_candidate_is_refitted_on_every_label() -> None:
    traffic = synthetic(300, seed=4, flip=True)
    stale = router_on(synthetic(300, seed=5))
    rows = [{**r, "ts": 500.0 + i} for i, r in enumerate(label_rows(traffic))]
    data = traffic_dataset(rows)
    refitted = retrain(data, stale, "tfidf-lr", 0.2, times=label_times(rows))
    assert refitted.promote
    meta = refitted.candidate.metadata  # type: ignore[union-attr]
    assert meta["training_data"]["traffic_rows"] == 300 and meta["training_data"]["refit_on_all_labels"]
    assert meta["training_data"]["newest_label_ts"] == 799.0
    # the next fit compares with it only on labels newer than those it learned
    more = [{**r, "ts": 800.0 + i} for i, r in enumerate(label_rows(synthetic(30, seed=40, flip=True)))]
    assert unseen_by(refitted.candidate, label_times(rows + more)).sum() == 30
    too_few = retrain(traffic_dataset(rows + more), refitted.candidate, "tfidf-lr", 0.2,
                      times=label_times(rows + more))
    assert not too_few.promote and "30 labels the serving router never trained on" in too_few.reason


def test_recent_split_holds_out_whole_newest_prompts() -> None:
    data = traffic_dataset([{"prompt": p, "weak_score": 1.0, "strong_score": 1.0, "source": "shadow"}
                            for p in ["a", "b", "a", "c", "d", "e", "f", "g"]])
    train, held = recent_split(data, 0.25)
    assert [data.prompts[i] for i in held] == ["f", "g"]
    assert not {data.prompts[i] for i in train} & {"f", "g"}


def test_retrain_refuses_a_degenerate_candidate() -> None:
    rows = [{"prompt": f"alpha zeta{i} omega{i}", "weak_score": float(i % 2), "strong_score": 1.0,
             "source": "shadow"} for i in range(80)]  # one shared word: each fold's candidate gives one score
    out = retrain(traffic_dataset(rows), None, "tfidf-lr", 0.2)
    assert not out.promote and "degenerate router" in out.reason


def test_missing_or_broken_artifact_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    for path in (tmp_path / "missing.npz", tmp_path / "broken.npz", tmp_path):
        router, why = load_serving(path)
        assert router is None and why is not None and "routing by the chain's rules" in why
    assert "unusable" in caplog.text


def test_fit_from_traffic_cli_promotes_refuses_and_rolls_back(tmp_path: Path) -> None:
    """Labels from shadow calls in the ledger -> `turnout router fit --from-traffic` promotes a
    better router; a worse candidate is refused; `turnout router rollback` restores the first."""
    db = tmp_path / "turnout.sqlite"
    store = SQLiteLabels(db)
    traffic = synthetic(240, seed=7, flip=True)
    for i, (p, w, s) in enumerate(zip(traffic.prompts, traffic.weak, traffic.strong, strict=True)):
        store.add_sync(Label("acme", "auto", p, "small", "big", "shadow", "labels", w, s, f"r{i}", ts=1000.0 + i))
    baseline = router_on(synthetic(300, seed=8)).save(tmp_path / "public.npz")
    reg = tmp_path / "routers" / "auto"
    common = ["--alias", "auto", "--registry", str(reg)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("router", *args, env=ENV, cwd=tmp_path)

    common_fit = [*common, "--family", "tfidf-lr"]  # family auto is tested in-process; here the CLI's flow
    first = cli("fit", "--from-traffic", *common_fit, "--db", str(db), "--baseline", str(baseline), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["promoted"] is True
    assert resolve(reg).name == "r0002.npz"
    served = LearnedRouter.load(resolve(reg))
    assert served.metadata["training_data"]["labels_by_source"] == {"shadow": 240}

    noisy = tmp_path / "opposite.csv"
    public = synthetic(2000, seed=9)
    write_outcomes(noisy, public)
    unchanged = cli("fit", "--from-traffic", *common_fit, "--db", str(db))  # no label it has not learned from
    assert unchanged.returncode == 3 and "0 labels the serving router never trained on" in unchanged.stdout
    newer = synthetic(60, seed=17, flip=True)
    for i, (p, w, s) in enumerate(zip(newer.prompts, newer.weak, newer.strong, strict=True)):
        store.add_sync(Label("acme", "auto", p, "small", "big", "shadow", "labels", w, s, f"n{i}", ts=2000.0 + i))
    second = cli("fit", "--from-traffic", *common_fit, "--db", str(db), "--warm-start", str(noisy))
    assert second.returncode == 3, second.stderr + second.stdout
    assert "refused r0003" in second.stdout and resolve(reg).name == "r0002.npz"

    history = cli("history", *common, "--json")
    events = json.loads(history.stdout)["events"]
    assert [e["event"] for e in events] == ["promoted", "promoted", "refused", "refused"]
    assert events[1]["candidate"]["apgr"] > events[1]["current"]["apgr"]
    back = cli("rollback", *common)
    assert back.returncode == 0 and "now serving r0001.npz" in back.stdout
    assert resolve(reg).name == "r0001.npz"
    again = cli("rollback", *common)
    assert again.returncode == 2 and "nothing to roll back" in again.stderr
    table = cli("history", *common)
    assert "rollback" in table.stdout and "refused" in table.stdout


def test_registry_rollback_chains_back() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        reg = Registry(Path(folder))
        router = router_on(synthetic(100))
        paths = [reg.add(router) for _ in range(3)]
        for p in paths:
            reg.promote(p)
        assert reg.rollback().name == "r0002.npz"
        assert reg.rollback().name == "r0001.npz"
        with pytest.raises(ValueError, match="first artifact"):
            reg.rollback()


# --- item 4: the replay simulator, in-process -----------------------------------------------

def test_replay_learns_the_traffic_from_a_foreign_router() -> None:
    target = synthetic(600, seed=10, flip=True)
    initial = router_on(synthetic(400, seed=11), escalate=0.2)
    cfg = ReplayConfig(family="tfidf-lr", label_budget=240, batch=100, retrain_every=80, shadow_share=0.5)
    result = replay(target, initial, cfg, source="synthetic")
    first, last = result.curve[0], result.curve[-1]
    assert first.labels == 0 and first.apgr < 0.5
    assert last.labels == 240 and last.apgr > 0.65 and last.serving != "initial"
    assert last.shadow_calls == 240 and any("promoted" in e for e in result.events)


# --- item 3: drift in /metrics and `turnout usage` -------------------------------------------

def test_drift_metrics_export() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from turnout.routing.drift import WINDOW, DriftMetrics
    from turnout.routing.shadow import ShadowStats

    registry = CollectorRegistry()
    drift = DriftMetrics(registry)
    tracker = ThresholdTracker(window=100, min_samples=10, every=1)
    tracker.configure("auto", 0.2, 0.3)
    for s in np.linspace(0.5, 0.9, 100):
        tracker.observe("auto", float(s))
    stats = ShadowStats(considered={"auto": 10}, labelled={"auto": 4}, agreed={"auto": 3}, spent_usd=0.25,
                        tenants={("auto", "acme", "considered"): 6, ("auto", "acme", "labelled"): 4,
                                 ("auto", "acme", "agreed"): 3, ("auto", "intruder", "considered"): 4},
                        spent_by_tenant={"acme": 0.2, "intruder": 0.05})
    for i in range(10):  # acme: 3 of 10 served strong, all 10 by the artifact's threshold
        drift.observe("auto", "acme", escalated=i < 3, artifact_escalated=True)
    drift.observe("cascade", "acme", escalated=True)
    drift.update(tracker, stats, tenant_of=lambda t: t if t == "acme" else "other")
    text = generate_latest(registry).decode()
    assert 'turnout_router_threshold{kind="artifact",route="auto"} 0.3' in text
    assert 'turnout_router_escalation_share{kind="artifact",route="auto",tenant="acme"} 1.0' in text
    assert 'turnout_router_escalation_share{kind="served",route="auto",tenant="acme"} 0.3' in text
    assert 'turnout_router_escalated_total{kind="served",route="auto",tenant="acme"} 3.0' in text
    assert 'turnout_router_decisions_total{route="auto",tenant="acme"} 10.0' in text
    assert 'turnout_router_escalation_share{kind="served",route="cascade",tenant="acme"} 1.0' in text
    assert 'kind="artifact",route="cascade"' not in text  # a cascade has no artifact
    assert 'turnout_shadow_agreement{route="auto",tenant="acme"} 0.75' in text
    assert 'turnout_shadow_requests{result="considered",route="auto",tenant="acme"} 6.0' in text
    assert 'turnout_shadow_requests{result="considered",route="auto",tenant="other"} 4.0' in text  # folded
    assert 'turnout_shadow_spend_usd{tenant="acme"} 0.2' in text
    assert "intruder" not in text
    served = tracker.snapshot()["auto"].threshold
    assert served == pytest.approx(np.quantile(np.linspace(0.5, 0.9, 100), 0.8))
    assert f'turnout_router_threshold{{kind="served",route="auto"}} {served}' in text
    for _ in range(3 * WINDOW):  # a moving share: it follows the recent requests
        drift.observe("auto", "acme", escalated=False)
    assert drift._shares[("auto", "acme", "served")].value < 0.05


def test_usage_reports_escalation_and_the_learning_loop(tmp_path: Path) -> None:
    from turnout.ledger.sqlite import COLUMNS, MIGRATIONS
    from turnout.sqlitedb import connect, migrate

    db = tmp_path / "turnout.sqlite"
    conn = connect(db)
    migrate(conn, "ledger_migrations", MIGRATIONS)
    base = dict.fromkeys(COLUMNS)
    rows = []
    for i, (score, threshold) in enumerate([(0.9, 0.5), (0.2, 0.5), (0.3, 0.5), (0.7, 0.5)]):
        rows.append({**base, "ts": 1000.0 + i, "request_id": f"r{i}", "tenant": "acme", "alias": "auto",
                     "strategy": "learned", "score": score, "threshold": threshold, "engine": "small",
                     "locality": "local", "hops": "[]", "prompt_tokens": 1, "completion_tokens": 1,
                     "cost_usd": 0.0, "baseline_cost_usd": 0.0, "status": "ok", "http_status": 200, "stream": 0,
                     "labels": ""})
    for r in rows:
        conn.execute(f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                     [r[c] for c in COLUMNS])
    conn.close()
    store = SQLiteLabels(db)
    store.add_sync(Label("acme", "auto", "p1", "small", "big", "shadow", "labels", 1.0, 1.0, "r1", 0.01))
    store.add_sync(Label("acme", "auto", "p2", "small", "big", "shadow", "labels", 0.0, 1.0, "r2", 0.01))
    store.add_sync(Label("acme", "auto", "p3", "small", "big", "cascade", "cascade:confidence", 0.0, None))
    out = run_cli("usage", "--db", str(db), "--json", env=ENV)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["routes"]["auto"]["escalation_rate"] == 0.5
    loop = summary["learning"]["auto"]
    assert loop["by_source"] == {"cascade": 1, "shadow": 2} and loop["labelling_share"] == 0.5
    assert loop["shadow_agreement"] == 0.5 and loop["judged_local_quality"] == pytest.approx(1 / 3)
    table = run_cli("usage", "--db", str(db), env=ENV).stdout
    assert "learning loop" in table and "escalated" in table


def test_learned_serving_never_fails_a_request(tmp_path: Path) -> None:
    from turnout.routing.serving import LearnedServing

    good = router_on(synthetic(300, seed=12), escalate=0.3).save(tmp_path / "good.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    serving = LearnedServing.from_routes({"auto": (good, 0.5, None), "broken": (tmp_path / "bad.npz", 0.2, None),
                                          "fixed": (good, None, 0.99)})
    v = serving.decide("broken", "explain the theorem")
    assert v.escalate is None and "unusable" in v.reason and "rules" in v.reason
    assert serving.decide("fixed", "explain the theorem and the lemma").escalate is False  # 0.99 fixed
    shares = [serving.decide("auto", p).escalate for p in synthetic(400, seed=13).prompts]
    assert abs(np.mean(shares[100:]) - 0.5) < 0.08  # the tracked share, not the artifact's 0.3
    assert "(tracked)" in serving.decide("auto", "explain the city").reason

    class Exploding:
        uses_embeddings = False
        name = "boom"

        def predict(self, prompts: list[str], emb: object) -> np.ndarray:
            raise RuntimeError("embedding model vanished")

    serving.replace("auto", LearnedRouter(Exploding(), 0.5))  # type: ignore[arg-type]
    v = serving.decide("auto", "explain the city")
    assert v.escalate is None and "embedding model vanished" in v.reason


def test_eval_router_replay_cli(tmp_path: Path) -> None:
    artifact = router_on(synthetic(400, seed=14), escalate=0.2).save(tmp_path / "public.npz")
    target = synthetic(600, seed=15, flip=True)
    path = tmp_path / "traffic.csv"
    write_outcomes(path, target)
    out = run_cli("eval", "router", "--replay", str(path), "--artifact", str(artifact), "--router", "tfidf-lr",
                  "--label-budget", "150", "--sampling", "uniform", "--json", env=ENV)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["config"]["sampling"] == "uniform" and result["curve"][-1]["labels"] == 150
    assert result["curve"][-1]["apgr"] > result["curve"][0]["apgr"] + 0.2


def test_cascade_and_feedback_labels(tmp_path: Path) -> None:
    from turnout.routing.shadow import cascade_label, feedback_label

    store = SQLiteLabels(tmp_path / "t.sqlite")
    store.add_sync(cascade_label(tenant="acme", alias="auto", prompt="p", weak_engine="small", strong_engine="big",
                                 request_id="r1"))
    store.add_sync(feedback_label(tenant="acme", alias="auto", prompt="q", engine="small", weak_engine="small",
                                  strong_engine="big", satisfaction=0.75, request_id="r2"))
    store.add_sync(feedback_label(tenant="acme", alias="auto", prompt="s", engine="big", weak_engine="small",
                                  strong_engine="big", satisfaction=0.0, request_id="r3"))
    rows = store.rows("auto")
    assert [(r["source"], r["weak_score"], r["strong_score"]) for r in rows] == [
        ("cascade", 0.0, None), ("feedback", 0.75, None), ("feedback", None, 0.0)]
    data = traffic_dataset(rows)
    assert data.weak.tolist() == [0.0, 0.75, 1.0] and data.strong.tolist() == [1.0, 1.0, 0.0]
    assert labelable_prompt("my name is Ann", "my name is <PERSON_1a2b>", True) == "my name is <PERSON_1a2b>"
    assert labelable_prompt("secret", None, False) is None


def test_tracker_seeded_with_recent_scores_serves_the_target_at_once() -> None:
    tracker = ThresholdTracker(window=200, min_samples=50)
    seed = np.linspace(0.0, 1.0, 201).tolist()
    tracker.configure("auto", 0.25, artifact_threshold=0.1, seed_scores=seed)
    assert tracker.threshold("auto") == pytest.approx(np.quantile(seed[-200:], 0.75))
    tracker.configure("fresh", 0.25, artifact_threshold=0.1)
    assert tracker.threshold("fresh") == 0.1
