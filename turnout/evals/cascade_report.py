"""The signal table of `turnout eval cascade`: every confidence signal of
``turnout.routing.confidence`` computed on the same cached answers, with AUROC for local
correctness and the cascade's APGR / CPT(50%) / CPT(80%) against the strong model's labels.

A signal the answer does not allow (None: no option letter, no check applies) counts as the
lowest confidence, as in the gateway, where an answer without a score escalates. The
``combined`` rows are logistic regressions over the single-sample signals (and, in the second,
``agreement``), scored out of fold (stratified 5-fold cross-validation) so that no answer is
scored by a model that saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from turnout.evals.cascade_tasks import Item, correct

ESCALATION_SHARES = (0.2, 0.5, 0.8)
COMBINED_FEATURES = ("mean_logprob", "min_logprob", "p10_logprob", "neg_entropy", "high_prob_share",
                     "answer_logprob", "option_prob", "verifier")


def record_of(res: Any) -> dict[str, Any]:
    """A ChatResult's token record as JSON (what the signals read)."""
    c = res.confidence
    if c is None:
        return {"token_logprobs": [], "token_entropies": [], "tokens": [], "top_logprobs": []}
    return {"token_logprobs": [round(v, 5) for v in c.token_logprobs],
            "token_entropies": [round(v, 5) for v in c.token_entropies], "tokens": c.tokens,
            "top_logprobs": [[[t, round(v, 5)] for t, v in step] for step in c.top_logprobs]}


def result_of(rec: dict[str, Any]) -> Any:
    """The ChatResult a cached record stands for."""
    from turnout.engines.base import ChatResult, Confidence, Usage

    conf = Confidence(list(rec["token_logprobs"]), list(rec["token_entropies"]), list(rec["tokens"]),
                      [[(t, v) for t, v in step] for step in rec["top_logprobs"]])
    return ChatResult(content=rec["answer"], finish_reason=rec.get("finish_reason", "stop"),
                      usage=Usage(rec.get("prompt_tokens", 0), rec.get("completion_tokens", 0)), confidence=conf)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Probability that a random correct answer has higher confidence than a random wrong one."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _filled(values: Sequence[float | None]) -> list[float]:
    """None as the lowest confidence (the gateway escalates an answer it cannot score)."""
    known = [v for v in values if v is not None]
    floor = (min(known) if known else 0.0) - 1.0
    return [floor if v is None else v for v in values]


def out_of_fold(rows: list[dict[str, float | None]], labels: list[int], features: Sequence[str],
                folds: int = 5, seed: int = 0) -> list[float] | None:
    """Cross-validated P(correct) from a logistic regression on the signals; None when a class
    has fewer members than folds."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold  # type: ignore[import-untyped]

    from turnout.routing.confidence import fit_combination

    y = np.asarray(labels, dtype=int)
    if min(int(y.sum()), int(len(y) - y.sum())) < folds:
        return None
    out = np.zeros(len(rows))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        comb = fit_combination([rows[i] for i in train], [labels[i] for i in train], features)
        for i in test:
            out[i] = comb.predict(rows[i])
    return [float(v) for v in out]


def summarize(task: str, items: list[Item], runs: list[list[dict[str, Any]]],
              save_combination: str | None = None) -> dict[str, Any]:
    import numpy as np

    from turnout.evals.routing_metrics import evaluate_scores
    from turnout.routing.confidence import SINGLE_SAMPLE, fit_combination, signals

    greedy = runs[0]
    n = len(greedy)
    items = items[:n]
    labels = [correct(task, it, rec["answer"]) for it, rec in zip(items, greedy, strict=True)]
    others = runs[1:]
    rows = [signals(result_of(rec), [result_of(r[i]) for r in others]) for i, rec in enumerate(greedy)]
    weak = np.array(labels, float)
    strong = np.array([it.strong for it in items], float)
    columns: dict[str, list[float | None]] = {s: [r[s] for r in rows] for s in SINGLE_SAMPLE
                                              if any(r[s] is not None for r in rows)}
    if others:
        columns["agreement"] = [r["agreement"] for r in rows]
    single = [f for f in COMBINED_FEATURES if f in columns]
    comb = out_of_fold(rows, labels, single)
    if comb is not None:
        columns["combined"] = list(comb)
    if others:
        both = out_of_fold(rows, labels, [*single, "agreement"])
        if both is not None:
            columns["combined+agreement"] = list(both)
    table = {}
    for name, values in columns.items():
        filled = _filled(values)
        m = evaluate_scores(-np.array(filled), weak, strong)  # low confidence -> escalate
        table[name] = {"coverage": sum(v is not None for v in values) / n, "auroc": auroc(filled, labels),
                       "apgr": m.apgr, "cpt50": m.cpt50, "cpt80": m.cpt80,
                       "thresholds": {f"escalate_{int(r * 100)}pct": float(np.quantile(filled, r))
                                      for r in ESCALATION_SHARES}}
    tokens = [rec["completion_tokens"] for rec in greedy]
    out: dict[str, Any] = {
        "task": task, "n": n, "samples": len(runs), "local_accuracy": float(weak.mean()),
        "strong_accuracy": float(strong.mean()),
        "tokens_per_answer": float(np.mean(tokens)), "seconds_per_answer": float(np.mean([r["seconds"] for r in greedy])),
        "cut_at_max_tokens": sum(r["finish_reason"] == "length" for r in greedy) / n,
        "signals": table,
        # the answers' signals, one row per question, for the router-learning loop and audits
        "rows": [{**r, "correct": y, "strong": it.strong} for r, y, it in zip(rows, labels, items, strict=True)],
    }
    if len(runs) > 1:
        out["sample_accuracy"] = float(np.mean([correct(task, it, rec["answer"]) for it, rec in zip(items, runs[1], strict=True)]))
    if save_combination and single:
        import json

        fitted = fit_combination(rows, labels, single)
        Path(save_combination).write_text(json.dumps(fitted.to_json(), indent=2) + "\n", encoding="utf-8")
        out["combination_saved"] = save_combination
    return out


def _fmt(v: float | None) -> str:
    return "    -" if v is None else f"{v:5.3f}"


def print_report(report: dict[str, Any]) -> None:
    fmt = _fmt
    print(f"engine {report['engine']}, task {report['task']} ({report['prompt']} prompt), {report['n']} questions, "
          f"{report['samples']} answer(s) each ({report['cached']} from cache)")
    print(f"  local accuracy {report['local_accuracy']:.1%}   strong (GPT-4) accuracy {report['strong_accuracy']:.1%}   "
          f"{report['tokens_per_answer']:.0f} tokens/answer, {report['seconds_per_answer']:.1f} s/answer, "
          f"{report['cut_at_max_tokens']:.0%} cut at max tokens")
    if "sample_accuracy" in report:
        print(f"  second sample (temperature > 0) accuracy {report['sample_accuracy']:.1%}")
    print(f"  {'signal':<20} {'cover':>5} {'AUROC':>5} {'APGR':>5} {'CPT50':>6} {'CPT80':>6}   threshold at 20/50/80% escalation")
    for name, row in report["signals"].items():
        t = row["thresholds"]
        print(f"  {name:<20} {row['coverage']:5.0%} {fmt(row['auroc'])} {fmt(row['apgr'])} {row['cpt50']:6.1%} "
              f"{row['cpt80']:6.1%}   {t['escalate_20pct']:.3f} / {t['escalate_50pct']:.3f} / {t['escalate_80pct']:.3f}")
    print("  (signals: higher = more confident; a cascade route escalates below routes.<alias>.threshold of its "
          "routes.<alias>.confidence_signal; 'combined' rows are cross-validated)")
