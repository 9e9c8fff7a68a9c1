"""Learning curves of the traffic loop: replay a data set as live traffic, starting from a router
trained on another, and report APGR / CPT50 of the serving router against the labels collected.

    OMP_NUM_THREADS=1 python bench/router_replay.py --source mmlu --target gsm8k
    OMP_NUM_THREADS=1 python bench/router_replay.py --source mmlu --target mt_bench --budget 60
    OMP_NUM_THREADS=1 python bench/router_replay.py --source gsm8k --target mmlu

The starting router is ``--initial-family`` (default tfidf-lr) fitted on all of ``--source``, its
threshold at the 80th percentile of its scores there (20 % strong calls); or ``--artifact R.npz``.
Each fold of five over the target's distinct prompts is, in turn, the untouched test slice; the
other four are the traffic (see turnout/evals/replay.py). For each sampling the curve is the mean
over those folds of the serving router's test APGR / CPT50 after N labels (the last point at or
before N); "labels to reach" is the first checkpoint whose mean APGR reaches the level.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def at(curve: list, labels: int, field: str) -> float:  # type: ignore[type-arg]
    value = float("nan")
    for p in curve:
        if p.labels <= labels:
            value = getattr(p, field)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/routellm")
    parser.add_argument("--source", default="mmlu")
    parser.add_argument("--target", default="gsm8k")
    parser.add_argument("--artifact", type=Path, default=None)
    parser.add_argument("--initial-family", default="tfidf-lr")
    parser.add_argument("--family", default="hybrid-stats", help="family the loop refits")
    parser.add_argument("--embedding", default="minilm-onnx-fp32", help="same vectors as minilm, faster")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--samplings", nargs="+", default=["uncertainty", "uniform"])
    parser.add_argument("--retrain-every", type=int, default=100)
    parser.add_argument("--reference", type=float, default=None, help="in-domain 5-fold APGR of the target")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from turnout.evals.datasets import load_dataset
    from turnout.evals.replay import ReplayConfig, embed_lookup, replay
    from turnout.routing.embeddings import cached_embeddings
    from turnout.routing.learned import LearnedRouter, fit_final, make_embedder
    from turnout.routing.scorers import make_scorer

    cache = Path(".turnout/cache")
    target = load_dataset(args.target, args.data_dir)
    needs_emb = make_scorer(args.family).uses_embeddings or make_scorer(args.initial_family).uses_embeddings
    encoder = make_embedder(args.embedding, cache) if needs_emb else None
    embed = None
    if encoder is not None:
        embed = embed_lookup(target.prompts, cached_embeddings(encoder, target.prompts, cache))  # type: ignore[arg-type]
    if args.artifact:
        initial = LearnedRouter.load(args.artifact)
        source = str(args.artifact)
    else:
        src = load_dataset(args.source, args.data_dir)
        src_emb = cached_embeddings(encoder, src.prompts, cache) if (  # type: ignore[arg-type]
            encoder is not None and make_scorer(args.initial_family).uses_embeddings) else None
        scorer = fit_final(args.initial_family, src.prompts, src_emb, src.weak, src.strong)
        threshold = float(np.quantile(scorer.predict(src.prompts, src_emb), 0.8))
        initial = LearnedRouter(scorer, threshold, {"embedding": args.embedding})
        source = f"{args.source} ({args.initial_family}, all {len(src)} rows)"
    print(f"target {args.target}: {len(target)} prompts; start: {source}; loop refits {args.family}; "
          f"budget {args.budget} labels; folds {args.folds}")
    checkpoints = [c for c in (0, 50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 1000) if c <= args.budget]
    if args.budget not in checkpoints:
        checkpoints.append(args.budget)
    means: dict[str, list[float]] = {}
    for sampling in args.samplings:
        t = time.perf_counter()
        apgr = np.full((len(args.folds), len(checkpoints)), np.nan)
        cpt = np.full_like(apgr, np.nan)
        cost = np.full_like(apgr, np.nan)
        for k, fold in enumerate(args.folds):
            cfg = ReplayConfig(family=args.family, sampling=sampling, label_budget=args.budget, test_fold=fold,
                               seed=fold, retrain_every=args.retrain_every)
            result = replay(target, initial, cfg, embed, source)
            for j, c in enumerate(checkpoints):
                apgr[k, j], cpt[k, j] = at(result.curve, c, "apgr"), at(result.curve, c, "cpt50")
                cost[k, j] = at(result.curve, c, "shadow_calls")
        means[sampling] = [float(np.nanmean(apgr[:, j])) for j in range(len(checkpoints))]
        print(f"\n{sampling} sampling ({time.perf_counter() - t:.0f} s): mean over folds {args.folds}")
        print(f"{'labels':>6} {'APGR':>6} {'sd':>6} {'CPT50':>6} {'shadow calls':>12}")
        for j, c in enumerate(checkpoints):
            print(f"{c:>6} {np.nanmean(apgr[:, j]):>6.3f} {np.nanstd(apgr[:, j]):>6.3f} "
                  f"{np.nanmean(cpt[:, j]) * 100:>5.1f}% {np.nanmean(cost[:, j]):>12.0f}")
    levels = [0.55, 0.60, 0.62, 0.64, 0.65]
    if args.reference is not None:
        levels.append(round(args.reference - 0.03, 3))
    print("\nlabels to reach a mean APGR (first checkpoint at or above):")
    for level in sorted(set(levels)):
        row = []
        for sampling, curve in means.items():
            hit = next((c for c, a in zip(checkpoints, curve, strict=True) if not math.isnan(a) and a >= level), None)
            row.append(f"{sampling} {hit if hit is not None else '>' + str(args.budget)}")
        print(f"  {level:.3f}: " + ", ".join(row))


if __name__ == "__main__":
    main()
