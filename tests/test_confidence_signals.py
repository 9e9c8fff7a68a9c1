"""Confidence signals (turnout.routing.confidence) on answers the real Qwen2.5-Coder-0.5B gave
(recorded by `turnout eval cascade --engine qwen --task gsm8k --prompt fewshot`: a few rows of
its cache, with the whole token record, in tests/data/cascade_answers.jsonl), on OpenAI-shaped
``logprobs`` as the loopback upstream sends them, and the embedded engine's logits processor
against a direct computation. No model is needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from turnout.config import ConfigError, parse_config
from turnout.engines.base import ChatResult, Confidence, Usage
from turnout.engines.llamacpp import TokenLogprobs
from turnout.evals.cascade_report import auroc, out_of_fold, result_of
from turnout.routing import cascade
from turnout.routing.confidence import (
    DEFAULT_SIGNAL,
    SIGNALS,
    Combination,
    answer_span,
    fit_combination,
    score,
    signals,
    token_record,
    verifier,
)

RECORDED = Path(__file__).parent / "data" / "cascade_answers.jsonl"


def recorded() -> list[dict]:
    return [json.loads(line) for line in RECORDED.read_text().splitlines()]


def by_answer_end(end: str) -> dict:
    return next(r for r in recorded() if r["answer"].rstrip().endswith(end))


def test_token_signals_match_a_direct_computation_on_a_recorded_answer() -> None:
    rec = by_answer_end("#### 42")
    res = result_of(rec)
    s = signals(res)
    lps = np.array(rec["token_logprobs"])
    assert s["mean_logprob"] == pytest.approx(lps.mean(), abs=1e-6)
    assert s["min_logprob"] == pytest.approx(lps.min(), abs=1e-6)
    assert s["p10_logprob"] == pytest.approx(np.quantile(lps, 0.1), abs=1e-6)
    assert s["neg_entropy"] == pytest.approx(-np.mean(rec["token_entropies"]), abs=1e-6)
    assert s["high_prob_share"] == pytest.approx(np.mean(np.exp(lps) >= 0.5), abs=1e-6)
    assert s["mean_logprob"] > s["p10_logprob"] >= s["min_logprob"]
    # the final answer's tokens are those of "42" after the last ####
    text = "".join(rec["tokens"])
    a, b = answer_span(text)
    assert text[a:b] == "42"
    pos, idx = 0, []
    for i, t in enumerate(rec["tokens"]):
        if pos + len(t) > a and pos < b:
            idx.append(i)
        pos += len(t)
    assert s["answer_logprob"] == pytest.approx(min(lps[i] for i in idx), abs=1e-6)
    assert s["verifier"] == 1.0 and s["option_prob"] is None
    assert s["agreement"] is None and s["combined"] is None  # need a second sample / fitted weights


def test_agreement_compares_final_answers_of_two_recorded_samples() -> None:
    greedy, sampled = [result_of(r) for r in recorded() if r["answer"].rstrip().endswith(("#### 42"))]
    assert score(greedy, "agreement", [sampled]) == 1.0  # both end "#### 42"
    other = result_of(by_answer_end("#### 13000"))
    assert score(greedy, "agreement", [other]) == 0.0
    assert score(greedy, "agreement", [sampled, other]) == 0.5
    assert cascade.needs_second_sample("agreement") and not cascade.needs_second_sample("min_logprob")
    second = cascade.second_sample(cascade.with_logprobs(
        __import__("turnout.protocol", fromlist=["ChatRequest"]).ChatRequest(
            model="m", messages=[{"role": "user", "content": "hi"}])))
    assert second.temperature and second.temperature > 0 and second.logprobs and second.top_logprobs == 5


def test_verifier_checks_what_the_answer_form_allows() -> None:
    assert verifier("so it is 12\n#### 1,200") == 1.0
    assert verifier("so it is\n#### twelve") == 0.0
    assert verifier('{"a": 1}') == 1.0 and verifier('{"a": 1') == 0.0
    assert verifier("```python\ndef f(x):\n    return x\n```") == 1.0
    assert verifier("```python\ndef f(x) return x\n```") == 0.0
    assert verifier("Paris is the capital of France.") is None


def test_option_prob_renormalises_the_letters_among_the_top_k() -> None:
    top = [("B", math.log(0.6)), ("A", math.log(0.2)), ("The", math.log(0.1)), ("C", math.log(0.05))]
    res = ChatResult(content="B", finish_reason="stop", usage=Usage(),
                     confidence=Confidence([math.log(0.6)], [1.0], ["B"], [top]))
    assert score(res, "option_prob") == pytest.approx(0.6 / 0.85)
    assert score(res, "answer_logprob") == pytest.approx(math.log(0.6))
    res.content = "I think the answer involves many words and no letter choice at the start at all, B."
    assert score(res, "option_prob") is None


def test_openai_shaped_logprobs_give_the_same_signals_with_entropy_from_the_top_k() -> None:
    """The shape the loopback upstream (and OpenAI) send: per token, logprob and top_logprobs."""
    def entry(tok: str, lp: float, alt: float) -> dict:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                "top_logprobs": [{"token": tok, "logprob": lp, "bytes": []},
                                 {"token": "x", "logprob": alt, "bytes": []}]}

    content = [entry("It", -0.1, -2.5), entry(" is", -0.2, -1.8), entry(" 7", -1.5, -0.4)]
    res = ChatResult(content="It is 7", finish_reason="stop", usage=Usage(), logprobs={"content": content})
    rec = token_record(res)
    assert rec is not None and rec.tokens == ["It", " is", " 7"]
    p, q = math.exp(-0.1), math.exp(-2.5)
    assert rec.token_entropies[0] == pytest.approx(-(p * math.log(p) + q * math.log(q)
                                                     + (1 - p - q) * math.log(1 - p - q)))
    s = signals(res)
    assert s["mean_logprob"] == pytest.approx(-0.6) and s["min_logprob"] == pytest.approx(-1.5)
    assert s["answer_logprob"] == pytest.approx(-1.5)  # the last number, " 7"
    assert cascade.confidence(res, "min_logprob") == pytest.approx(-1.5)
    assert cascade.confidence(res) == pytest.approx(-0.6)  # the default stays the mean (the pipeline's call today)
    words = ChatResult(content="It is", finish_reason="stop", usage=Usage(), logprobs={"content": content[:2]})
    assert score(words, "answer_logprob") == score(words, "min_logprob") == pytest.approx(-0.2)  # no answer tokens: all
    nothing = ChatResult(content="hi", finish_reason="stop", usage=Usage())
    assert score(nothing, "mean_logprob") is None and score(nothing, "verifier") is None
    with pytest.raises(ValueError, match="unknown confidence signal"):
        score(res, "vibes")


def test_logits_processor_records_logprob_entropy_and_top_k_like_a_direct_softmax() -> None:
    rng = np.random.default_rng(0)
    steps = [(rng.standard_normal(1000) * 3).astype(np.float32) for _ in range(3)]
    steps[2][:10] = -np.inf  # a grammar's mask
    rec = TokenLogprobs(top_k=3)
    chosen = [5, 17, 400]
    for i, logits in enumerate(steps):
        rec(np.array(chosen[:i], dtype=np.intc), logits)
    rec.finish(chosen[2])
    for i, logits in enumerate(steps):
        x = logits.astype(np.float64)
        lsm = x - x.max() - np.log(np.exp(x - x.max()).sum())
        p = np.exp(lsm)
        assert rec.chosen[i] == (chosen[i], pytest.approx(lsm[chosen[i]], abs=1e-4))
        assert rec.entropies[i] == pytest.approx(-np.sum(p[p > 0] * lsm[p > 0]), abs=1e-4)
        assert [k for k, _ in rec.top[i]] == list(np.argsort(-lsm)[:3])
    conf = rec.confidence(lambda t: f"<{t}>")
    assert conf.tokens == ["<5>", "<17>", "<400>"] and len(conf.top_logprobs) == 3 and len(conf.token_entropies) == 3


def test_combination_fits_predicts_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    rows, labels = [], []
    for i in range(80):
        y = i % 2
        rows.append({"min_logprob": float(rng.normal(-1.0 if y else -3.0, 0.5)),
                     "verifier": None if i % 5 == 0 else float(y)})
        labels.append(y)
    comb = fit_combination(rows, labels, ["min_logprob", "verifier"])
    again = Combination.from_json(json.loads(json.dumps(comb.to_json())))
    assert again == comb
    preds = [comb.predict(r) for r in rows]
    assert all(0.0 < p < 1.0 for p in preds)
    assert auroc(preds, labels) > 0.95
    oof = out_of_fold(rows, labels, ["min_logprob", "verifier"])
    assert oof is not None and auroc(oof, labels) > 0.9
    assert out_of_fold(rows[:6], labels[:6], ["min_logprob"]) is None  # too few of a class for 5 folds
    res = result_of(by_answer_end("#### 42"))
    assert score(res, "combined", combination=comb) == pytest.approx(comb.predict(signals(res)))


def test_route_confidence_signal_is_validated() -> None:
    base = {"engines": {"a": {"dialect": "llamacpp"}, "b": {"dialect": "llamacpp"}}}
    cfg = parse_config({**base, "routes": {"c": {"chain": ["a", "b"], "strategy": "cascade", "threshold": -1.0}}})
    assert cfg.routes["c"].confidence_signal == DEFAULT_SIGNAL == "answer_logprob"
    for signal in SIGNALS:
        if signal != "combined":
            parse_config({**base, "routes": {"c": {"chain": ["a", "b"], "strategy": "cascade", "threshold": -1.0,
                                                   "confidence_signal": signal}}})
    with pytest.raises(ConfigError, match="confidence_signal"):
        parse_config({**base, "routes": {"c": {"chain": ["a", "b"], "strategy": "cascade", "threshold": -1.0,
                                               "confidence_signal": "vibes"}}})
    with pytest.raises(ConfigError, match="confidence_model"):
        parse_config({**base, "routes": {"c": {"chain": ["a", "b"], "strategy": "cascade", "threshold": 0.5,
                                               "confidence_signal": "combined"}}})
