"""How router quality grows with labelled data: APGR against the number of training prompts.

    OMP_NUM_THREADS=1 python bench/router_learning_curve.py --dataset mmlu --router tfidf-lr stacked
    OMP_NUM_THREADS=1 python bench/router_learning_curve.py --dataset gsm8k --router hybrid-stats

The evaluation is the one of ``turnout eval router`` (5 folds over distinct prompts, RouteLLM's
APGR and CPT on the out-of-fold scores), except that each fold's router is trained on a random
share of its training prompts only. Each share is repeated over several fold seeds. A straight
line through (log2 of training prompts, APGR) then says how much each doubling of labelled data
buys, and how many labelled prompts the same trend would need to reach a target APGR: a
forecast of the scale needed, not a promise (learning curves of this kind flatten).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def subsampled_scores(make, data, emb, share: float, folds: int, seed: int) -> tuple[np.ndarray, int]:  # type: ignore[no-untyped-def]
    """Out-of-fold scores where each fold trains on ``share`` of its training prompts."""
    from turnout.evals.router_cv import check_disjoint, prompt_folds

    rng = np.random.default_rng(1000 + seed)
    scores = np.full(len(data), np.nan)
    sizes = []
    for train, test in prompt_folds(data.prompts, folds, seed):
        check_disjoint(data.prompts, train, test)
        if share < 1.0:
            train = np.sort(rng.choice(train, size=max(20, int(round(share * len(train)))), replace=False))
        sizes.append(len(train))
        scorer = make()
        scorer.fit([data.prompts[i] for i in train], None if emb is None else emb[train],
                   data.weak[train], data.strong[train])
        scores[test] = scorer.predict([data.prompts[i] for i in test], None if emb is None else emb[test])
    return scores, int(np.mean(sizes))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mmlu")
    p.add_argument("--router", nargs="+", default=["tfidf-lr"])
    p.add_argument("--shares", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    p.add_argument("--seeds", type=int, default=3, help="fold seeds per share")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--embedding", default="minilm",
                   choices=("minilm", "minilm-static", "minilm-onnx", "minilm-onnx-fp32"))
    p.add_argument("--target", type=float, default=None, help="APGR to forecast the data for (default: the issue's)")
    p.add_argument("--data-dir", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from turnout.evals.datasets import load_dataset
    from turnout.evals.router_cli import _embeddings, default_cache_dir, default_data_dir
    from turnout.evals.routing_metrics import evaluate_scores
    from turnout.routing.scorers import FAMILIES

    unknown = [r for r in args.router if r not in FAMILIES]
    if unknown:
        p.error(f"unknown router(s) {', '.join(unknown)}: choose from {', '.join(FAMILIES)}")
    if any(not 0 < s <= 1 for s in args.shares):
        p.error("--shares must lie in (0, 1]")
    target = args.target if args.target is not None else {"mmlu": 0.75, "gsm8k": 0.70}.get(args.dataset, 0.75)
    data = load_dataset(args.dataset, args.data_dir or default_data_dir())
    needs_emb = any(FAMILIES[r].uses_embeddings for r in args.router)
    emb = _embeddings(data, default_cache_dir(), args.embedding) if needs_emb else None
    print(f"{data.name}: {len(data)} prompts, {args.folds} folds, seeds 0..{args.seeds - 1}; "
          f"APGR mean ± sd over seeds; CPT50 as % of calls")
    print(f"{'router':<14} {'share':>6} {'train n':>8} {'APGR':>14} {'CPT50':>7} {'s/run':>6}")
    for name in args.router:
        xs, ys = [], []
        for share in sorted(args.shares):
            apgrs, cpts, sizes = [], [], []
            started = time.perf_counter()
            for seed in range(args.seeds):
                scores, n_train = subsampled_scores(FAMILIES[name], data, emb, share, args.folds, seed)
                m = evaluate_scores(scores, data.weak, data.strong)
                apgrs.append(m.apgr)
                cpts.append(m.cpt50)
                sizes.append(n_train)
            per_run = (time.perf_counter() - started) / args.seeds
            n = float(np.mean(sizes))
            xs += [np.log2(n)] * len(apgrs)
            ys += apgrs
            print(f"{name:<14} {share:>6.3f} {n:>8.0f} {np.mean(apgrs):>7.3f} ± {np.std(apgrs):.3f} "
                  f"{np.mean(cpts) * 100:>6.1f}% {per_run:>6.0f}", flush=True)
        slope, intercept = np.polyfit(xs, ys, 1)
        line = f"{name}: +{slope:.4f} APGR per doubling of training prompts"
        if slope > 0:
            needed = 2 ** ((target - intercept) / slope)
            line += f"; the same trend reaches {target:.2f} at ~{needed:,.0f} training prompts " \
                    f"({needed / 2 ** max(xs):.0f}x the full training folds)"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
