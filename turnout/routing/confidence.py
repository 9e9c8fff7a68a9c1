"""Confidence signals of a local answer, for cascades: does the weak engine's own record
predict that its answer is right?

Every signal reads one ``ChatResult`` (and, for ``agreement``, a second sample of the same
request) and is oriented the same way: higher means more confident. ``signals(result)`` computes
all of them at once (the ledger records that dict); ``score(result, name)`` gives one, or None
when the engine recorded nothing it needs.

The token record comes from the engine's ``Confidence`` (the embedded engine: chosen-token
log-probabilities, whole-vocabulary entropies, token texts, top-k alternatives) or, for HTTP
engines, from OpenAI-shaped ``logprobs`` (entropy is then estimated from the top-k, with the
mass outside them as one more outcome: a lower bound on the true entropy).

Signals (figures for each in docs/routing-eval.md, from `turnout eval cascade`):

- ``mean_logprob``, ``min_logprob``, ``p10_logprob``: mean, minimum and 10th percentile of the
  chosen tokens' log-probabilities.
- ``neg_entropy``: minus the mean next-token entropy (nats).
- ``high_prob_share``: share of tokens chosen with probability >= 0.5 (one minus the share of
  low-probability tokens).
- ``answer_logprob``: the lowest log-probability among the tokens of the final answer (the
  number after ``####``, else the last number; or a leading option letter): the tokens that
  decide correctness, not the reasoning around them. An answer with no such tokens (free
  text) falls back to all its tokens, i.e. ``min_logprob``, so the signal is defined wherever
  logprobs are.
- ``option_prob``: for a multiple-choice answer (a leading letter A-D), the probability of the
  chosen letter renormalised over the letters among the top-k at that position.
- ``verifier``: 1 if the answer passes the check its form allows (JSON that parses, a Python
  code block that compiles, a final number that parses after ``####``), 0 if it fails it; None
  when no check applies.
- ``agreement``: 1 if a second sample of the same request gives the same final answer, else 0
  (costs a second local generation: only with ``samples``).
- ``combined``: a logistic regression over the features above (see ``Combination``), with
  weights fitted by `turnout eval cascade --save-combination` on labelled answers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.results import ChatResult, Confidence

SINGLE_SAMPLE = ("mean_logprob", "min_logprob", "p10_logprob", "neg_entropy", "high_prob_share",
                 "answer_logprob", "option_prob", "verifier")
SIGNALS = (*SINGLE_SAMPLE, "agreement", "combined")
DEFAULT_SIGNAL = "answer_logprob"

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LEAD_LETTER = re.compile(r"^\W*(?:the answer is\W*)?\(?([ABCD])\b", re.IGNORECASE)
_CODE = re.compile(r"```(?:python|py)\s*\n(.*?)```", re.DOTALL)
_HALF = math.log(0.5)


def token_record(result: ChatResult) -> Confidence | None:
    """The per-token record of an answer: the engine's own, else parsed from OpenAI ``logprobs``."""
    conf = result.confidence
    if conf is not None and conf.token_logprobs:
        return conf
    content = (result.logprobs or {}).get("content") or []
    rec = Confidence()
    for t in content:
        if not isinstance(t, dict) or not isinstance(t.get("logprob"), int | float):
            continue
        rec.token_logprobs.append(float(t["logprob"]))
        rec.tokens.append(str(t.get("token", "")))
        top = [(str(a.get("token", "")), float(a["logprob"])) for a in t.get("top_logprobs") or ()
               if isinstance(a, dict) and isinstance(a.get("logprob"), int | float)]
        rec.top_logprobs.append(top)
    if not rec.token_logprobs:
        return None
    if all(rec.top_logprobs):
        rec.token_entropies = [_topk_entropy(top) for top in rec.top_logprobs]
    if not any(rec.tokens):
        rec.tokens = []
    return rec


def _topk_entropy(top: Sequence[tuple[str, float]]) -> float:
    ps = [math.exp(lp) for _, lp in top]
    rest = max(0.0, 1.0 - sum(ps))
    return -sum(p * math.log(p) for p in (*ps, rest) if p > 0)


def _quantile(values: Sequence[float], q: float) -> float:
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def answer_span(text: str) -> tuple[int, int] | None:
    """Character span of the final answer: a leading option letter, else the number after the
    last ``####``, else the last number in the text."""
    m = _LEAD_LETTER.match(text)
    if m and len(text.strip()) <= 80:
        return m.span(1)
    start = text.rfind("####")
    if start >= 0:
        n = _NUM.search(text, start)
        return n.span() if n else None
    nums = list(_NUM.finditer(text))
    return nums[-1].span() if nums else None


def _span_tokens(tokens: Sequence[str], span: tuple[int, int]) -> list[int]:
    """Indices of the tokens overlapping a character span of their concatenation."""
    out, pos = [], 0
    for i, t in enumerate(tokens):
        end = pos + len(t)
        if end > span[0] and pos < span[1]:
            out.append(i)
        pos = end
    return out


def answer_logprob(rec: Confidence, text: str) -> float | None:
    if not rec.tokens or "".join(rec.tokens) != text[: len("".join(rec.tokens))]:
        joined = "".join(rec.tokens)
        if not joined or joined.strip() != text.strip()[: len(joined.strip())]:
            return None
        text = joined
    span = answer_span(text)
    if span is None:
        return None
    idx = [i for i in _span_tokens(rec.tokens, span) if i < len(rec.token_logprobs)]
    return min(rec.token_logprobs[i] for i in idx) if idx else None


def option_prob(rec: Confidence, text: str) -> float | None:
    m = _LEAD_LETTER.match(text)
    if not m or len(text.strip()) > 80 or not rec.tokens or not rec.top_logprobs:
        return None
    idx = _span_tokens(rec.tokens, m.span(1))
    if not idx or idx[0] >= len(rec.top_logprobs):
        return None
    i, letter = idx[0], m.group(1).upper()
    probs: dict[str, float] = {}
    for tok, lp in rec.top_logprobs[i]:
        key = tok.strip().strip("(").upper()
        if key in ("A", "B", "C", "D"):
            probs[key] = probs.get(key, 0.0) + math.exp(lp)
    chosen = probs.get(letter, math.exp(rec.token_logprobs[i]))
    total = sum(probs.values()) + (0.0 if letter in probs else chosen)
    return chosen / total if total > 0 else None


def verifier(text: str) -> float | None:
    """1.0 / 0.0 where a check applies to the answer's form, else None."""
    body = text.strip()
    if body.startswith(("{", "[")) or body.startswith("```json"):
        raw = body.removeprefix("```json").removesuffix("```").strip()
        try:
            json.loads(raw)
            return 1.0
        except ValueError:
            return 0.0
    blocks = _CODE.findall(text)
    if blocks:
        try:
            for b in blocks:
                compile(b, "<answer>", "exec")
            return 1.0
        except (SyntaxError, ValueError):
            return 0.0
    if "####" in text:
        tail = text[text.rfind("####") + 4:].split()
        first = tail[0].rstrip(".").replace("$", "").rstrip("%") if tail else ""
        return 1.0 if _NUM.fullmatch(first) else 0.0
    return None


def final_answer(text: str) -> str | None:
    """The final answer as a comparable string (a letter, or a number without separators)."""
    span = answer_span(text)
    if span is None:
        return None
    got = text[span[0]:span[1]].replace(",", "").upper()
    try:
        return f"{float(got):g}"
    except ValueError:
        return got


def agreement(result: ChatResult, others: Sequence[ChatResult]) -> float | None:
    """Share of the other samples whose final answer equals this one's."""
    mine = final_answer(result.content or "")
    if not others or mine is None:
        return None if not others else 0.0
    return sum(final_answer(o.content or "") == mine for o in others) / len(others)


def signals(result: ChatResult, samples: Sequence[ChatResult] = (),
            combination: Combination | None = None) -> dict[str, float | None]:
    """Every signal of one answer (``agreement`` only with ``samples``, ``combined`` only with
    a ``combination``); JSON-ready, rounded to 6 digits."""
    text = result.content or ""
    rec = token_record(result)
    out: dict[str, float | None] = dict.fromkeys(SIGNALS)
    if rec is not None:
        lps = rec.token_logprobs
        out["mean_logprob"] = sum(lps) / len(lps)
        out["min_logprob"] = min(lps)
        out["p10_logprob"] = _quantile(lps, 0.1)
        out["high_prob_share"] = sum(lp >= _HALF for lp in lps) / len(lps)
        if rec.token_entropies:
            out["neg_entropy"] = -sum(rec.token_entropies) / len(rec.token_entropies)
        out["answer_logprob"] = answer_logprob(rec, text)
        if out["answer_logprob"] is None:
            out["answer_logprob"] = out["min_logprob"]
        out["option_prob"] = option_prob(rec, text)
    out["verifier"] = verifier(text)
    if samples:
        out["agreement"] = agreement(result, samples)
    if combination is not None:
        out["combined"] = combination.predict(out)
    return {k: (None if v is None else round(float(v), 6)) for k, v in out.items()}


def score(result: ChatResult, signal: str, samples: Sequence[ChatResult] = (),
          combination: Combination | None = None) -> float | None:
    """One signal of an answer (higher = more confident), or None if it cannot be computed."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown confidence signal {signal!r}; signals are {', '.join(SIGNALS)}")
    return signals(result, samples, combination)[signal]


# ---- the calibrated combination ---------------------------------------------------------
@dataclass(frozen=True)
class Combination:
    """P(answer right) = sigmoid(bias + sum w_f * standardised feature f). A missing feature
    counts as its training mean (0 after standardisation) plus a ``<f>_missing`` indicator."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    missing_weights: tuple[float, ...]
    bias: float

    def vector(self, values: dict[str, float | None]) -> list[float]:
        xs, miss = [], []
        for f, m, s in zip(self.features, self.mean, self.scale, strict=True):
            v = values.get(f)
            xs.append(0.0 if v is None else (v - m) / s)
            miss.append(1.0 if v is None else 0.0)
        return xs + miss

    def predict(self, values: dict[str, float | None]) -> float:
        x = self.vector(values)
        z = self.bias + sum(w * v for w, v in zip((*self.weights, *self.missing_weights), x, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "missing_weights": list(self.missing_weights), "bias": self.bias}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Combination:
        return cls(tuple(data["features"]), tuple(data["mean"]), tuple(data["scale"]), tuple(data["weights"]),
                   tuple(data["missing_weights"]), float(data["bias"]))

    @classmethod
    def load(cls, path: str | Path) -> Combination:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def fit_combination(rows: Sequence[dict[str, float | None]], labels: Sequence[int],
                    features: Sequence[str], c: float = 1.0) -> Combination:
    """Fit the logistic regression (scikit-learn, L2, ``C=c``) on signal dicts and correctness."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    raw = np.array([[math.nan if r.get(f) is None else float(r[f] or 0.0) for f in features] for r in rows],
                   dtype=np.float64).reshape(len(rows), len(features))
    known = ~np.isnan(raw)
    counts = known.sum(axis=0)
    mean = np.where(counts > 0, np.where(known, raw, 0.0).sum(axis=0) / np.maximum(counts, 1), 0.0)
    var = np.where(known, (raw - mean) ** 2, 0.0).sum(axis=0) / np.maximum(counts, 1)
    scale = np.where(var > 1e-18, np.sqrt(var), 1.0)
    comb = Combination(tuple(features), tuple(float(v) for v in mean), tuple(float(v) for v in scale),
                       (0.0,) * len(features), (0.0,) * len(features), 0.0)
    x = np.array([comb.vector(r) for r in rows], dtype=float)
    model = LogisticRegression(C=c, max_iter=1000).fit(x, np.asarray(labels, dtype=int))
    w = [float(v) for v in model.coef_[0]]
    return Combination(comb.features, comb.mean, comb.scale, tuple(w[: len(features)]), tuple(w[len(features):]),
                       float(model.intercept_[0]))
