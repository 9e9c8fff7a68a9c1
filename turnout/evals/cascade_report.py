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
# The frontier side of the cost curve: list prices of the example config's frontier engine
# (gpt-4o, USD per 1M tokens) and the embedded engine's default owned-hardware price (USD/hour).
FRONTIER_PRICE = (2.5, 10.0)
LOCAL_HOURLY = 0.05
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


def auroc_interval(scores: Sequence[float], labels: Sequence[int], reps: int = 1000,
                   seed: int = 0) -> tuple[float, float] | None:
    """95% bootstrap interval of the AUROC (questions resampled with replacement): small golden
    samples give wide intervals, and the report says so."""
    import random

    rng = random.Random(seed)
    n, values = len(scores), []
    for _ in range(reps):
        idx = [rng.randrange(n) for _ in range(n)]
        a = auroc([scores[i] for i in idx], [labels[i] for i in idx])
        if a is not None:
            values.append(a)
    if len(values) < reps // 2:
        return None
    values.sort()
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


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
    from sklearn.model_selection import StratifiedKFold

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


def learned_router_scores(items: list[Item], labels: list[int]) -> list[float] | None:
    """Out-of-fold P(strong needed) of turnout's TF-IDF router (prompt only, before any local
    generation), trained on these questions' local/strong outcomes; None if a fold lacks a class."""
    import numpy as np

    from turnout.evals.datasets import RoutingDataset
    from turnout.evals.router_cv import cross_val_scores
    from turnout.routing.scorers import FAMILIES

    data = RoutingDataset("cascade", [it.question for it in items], np.array(labels, float),
                          np.array([it.strong for it in items], float))
    try:
        return [float(v) for v in cross_val_scores(FAMILIES["tfidf-lr"], data, None, 5, 0)]
    except ValueError:
        return None


def cost_curve(escalate_order: Sequence[float], weak: Any, strong: Any,
               local_seconds: Sequence[float], frontier_usd: Sequence[float], *,
               runs_local_first: bool) -> list[dict[str, float]]:
    """Quality and cost per 1,000 questions when the lowest-ranked share goes to the frontier:
    a cascade pays the local answer for every question (``runs_local_first``), a router only
    for those it keeps."""
    import numpy as np

    order = np.argsort(-np.asarray(escalate_order, float), kind="stable")  # most in need first
    n = len(order)
    out = []
    for share in (0.0, *ESCALATION_SHARES, 1.0):
        up = np.zeros(n, bool)
        up[order[: int(round(share * n))]] = True
        quality = float(np.where(up, strong, weak).mean())
        local = np.asarray(local_seconds, float) * LOCAL_HOURLY / 3600.0
        no_local = np.zeros(n, bool) if runs_local_first else up
        usd = float(np.where(up, frontier_usd, 0.0).sum() + np.where(no_local, 0.0, local).sum())
        out.append({"frontier_share": share, "quality": quality, "usd_per_1000": 1000.0 * usd / n,
                    "local_seconds_per_q": float(np.where(no_local, 0.0, local_seconds).mean())})
    return out


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
    table: dict[str, dict[str, Any]] = {}
    for name, values in columns.items():
        filled = _filled(values)
        m = evaluate_scores(-np.array(filled), weak, strong)  # low confidence -> escalate
        table[name] = {"coverage": sum(v is not None for v in values) / n, "auroc": auroc(filled, labels),
                       "auroc_ci95": auroc_interval(filled, labels),
                       "apgr": m.apgr, "cpt50": m.cpt50, "cpt80": m.cpt80,
                       "thresholds": {f"escalate_{int(r * 100)}pct": float(np.quantile(filled, r))
                                      for r in ESCALATION_SHARES}}
    router = learned_router_scores(items, labels)
    if router is not None:
        m = evaluate_scores(np.array(router), weak, strong)
        table["router:tfidf-lr"] = {"coverage": 1.0, "auroc": auroc([-v for v in router], labels),
                                    "auroc_ci95": auroc_interval([-v for v in router], labels), "apgr": m.apgr,
                                    "cpt50": m.cpt50, "cpt80": m.cpt80, "thresholds": {}}
    tokens = [rec["completion_tokens"] for rec in greedy]
    # cost/quality: frontier price from the strong answer's length (RouteLLM's GPT-4 responses
    # where the data has them, else 5 tokens), about 4 characters a token
    frontier_usd = [(len(it.question) / 4 * FRONTIER_PRICE[0]
                     + it.extra.get("strong_chars", 20) / 4 * FRONTIER_PRICE[1]) / 1e6
                    for it in items]
    seconds = [float(r["seconds"]) for r in greedy]
    single_best = max((k for k in table if k in SINGLE_SAMPLE), key=lambda k: float(table[k]["apgr"]), default=None)
    curves: dict[str, Any] = {}
    if single_best is not None:
        curves[f"cascade:{single_best}"] = cost_curve([-v for v in _filled(columns[single_best])], weak, strong,
                                                      seconds, frontier_usd, runs_local_first=True)
    if router is not None:
        curves["router:tfidf-lr"] = cost_curve(router, weak, strong, seconds, frontier_usd, runs_local_first=False)
    out: dict[str, Any] = {
        "task": task, "n": n, "samples": len(runs), "local_accuracy": float(weak.mean()),
        "strong_accuracy": float(strong.mean()),
        "tokens_per_answer": float(np.mean(tokens)),
        "seconds_per_answer": float(np.mean([r["seconds"] for r in greedy])),
        "cut_at_max_tokens": sum(r["finish_reason"] == "length" for r in greedy) / n,
        "signals": table,
        "cost_curves": curves,
        "all_frontier": {"quality": float(strong.mean()), "usd_per_1000": 1000.0 * float(np.mean(frontier_usd))},
        # the answers' signals, one row per question, for the router-learning loop and audits
        "rows": [{**r, "correct": y, "strong": it.strong} for r, y, it in zip(rows, labels, items, strict=True)],
    }
    if len(runs) > 1:
        out["sample_accuracy"] = float(np.mean([correct(task, it, rec["answer"])
                                                for it, rec in zip(items, runs[1], strict=True)]))
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
    print(f"  local accuracy {report['local_accuracy']:.1%}   "
          f"strong (GPT-4) accuracy {report['strong_accuracy']:.1%}   "
          f"{report['tokens_per_answer']:.0f} tokens/answer, {report['seconds_per_answer']:.1f} s/answer, "
          f"{report['cut_at_max_tokens']:.0%} cut at max tokens")
    if "sample_accuracy" in report:
        print(f"  second sample (temperature > 0) accuracy {report['sample_accuracy']:.1%}")
    print(f"  {'signal':<20} {'cover':>5} {'AUROC':>5} {'(95% CI)':>13} {'APGR':>5} {'CPT50':>6} {'CPT80':>6}   "
          "threshold at 20/50/80% escalation")
    for name, row in report["signals"].items():
        t = row["thresholds"]
        ts = " / ".join(f"{t[f'escalate_{int(r * 100)}pct']:.4g}" for r in ESCALATION_SHARES) if t else "-"
        ci = row.get("auroc_ci95")
        cis = f"({ci[0]:.2f}-{ci[1]:.2f})" if ci else "-"
        print(f"  {name:<20} {row['coverage']:5.0%} {fmt(row['auroc'])} {cis:>13} {fmt(row['apgr'])} "
              f"{row['cpt50']:6.1%} {row['cpt80']:6.1%}   {ts}")
    for name, curve in report.get("cost_curves", {}).items():
        pts = "  ".join(f"{p['frontier_share']:.0%}: {p['quality']:.3f} ${p['usd_per_1000']:.3f}" for p in curve)
        print(f"  cost/quality {name:<24} (frontier share: quality, USD per 1000 questions) {pts}")
    if "all_frontier" in report:
        af = report["all_frontier"]
        print(f"  all-frontier: quality {af['quality']:.3f}, ${af['usd_per_1000']:.3f} per 1000 questions")
    print("  (signals: higher = more confident; a cascade route escalates below routes.<alias>.threshold of its "
          "routes.<alias>.confidence_signal; 'combined' rows are cross-validated)")
