"""Learning curves of the traffic loop: replay a data set as live traffic, starting from a router
trained on another, and report APGR / CPT50 of the serving router against the labels collected.

    OMP_NUM_THREADS=1 python bench/router_replay.py --source mmlu --target gsm8k
    OMP_NUM_THREADS=1 python bench/router_replay.py --source mmlu --target mt_bench --budget 60
    OMP_NUM_THREADS=1 python bench/router_replay.py --source gsm8k --target mmlu --family tfidf-lr

The loop refits ``--family`` (default ``auto``, as the gateway: chosen by cross-validation on its
labels; it needs MiniLM vectors of every target prompt, long for MMLU's 14k on a small machine),
gated at ``--confidence`` (default 0.9, as the gateway). The starting router is ``--initial-family``
(default tfidf-lr) fitted on all of ``--source``, its threshold at the 80th percentile of its
scores there (20 % strong calls); or ``--artifact R.npz``.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class CachedOnly:
    """The cache key of an encoder, for reading embeddings computed elsewhere (no model needed)."""

    def __init__(self, kind: str) -> None:
        from turnout.embedding.embeddings import MODEL_NAME

        keys = {"minilm": (f"{MODEL_NAME}|256|head-tail", "minilm"),
                "minilm-onnx-fp32": (f"{MODEL_NAME}|256|onnx-fp32-g1|head-tail", "minilm-onnx-fp32"),
                "minilm-onnx": (f"{MODEL_NAME}|256|onnx-int8-g1|head-tail", "minilm-onnx-int8")}
        self.cache_key, self.cache_prefix = keys[kind]

    def encode(self, texts: list[str], batch_size: int = 0, on_batch: Any = None) -> np.ndarray:
        raise RuntimeError("embeddings not in the cache: run once where the MiniLM package is installed")


_STATE: dict[str, Any] = {}


def _one(job: tuple[str, int]) -> tuple[str, int, list[Any], list[str]]:
    from turnout.evals.replay import ReplayConfig, replay

    sampling, fold = job
    a = _STATE["args"]
    cfg = ReplayConfig(family=a.family, sampling=sampling, label_budget=a.budget, test_fold=fold, seed=fold,
                       retrain_every=a.retrain_every, explore=a.explore, confidence=a.confidence)
    result = replay(_STATE["target"], _STATE["initial"], cfg, _STATE["embed"], _STATE["source"])
    return sampling, fold, result.curve, result.events


def _init(state: dict[str, Any]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    _STATE.update(state)


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
    parser.add_argument("--family", default="auto", help="family the loop refits, or auto (chosen by CV on its labels)")
    parser.add_argument("--confidence", type=float, default=0.9,
                        help="the gate's lower bound on the APGR gain (0.5: the point estimate)")
    parser.add_argument("--reference-family", default=None,
                        help="family of the in-domain reference (default: --family, hybrid-stats for auto)")
    parser.add_argument("--embedding", default="minilm-onnx-fp32", help="same vectors as minilm, faster")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--samplings", nargs="+", default=["uniform", "uncertainty"])
    parser.add_argument("--retrain-every", type=int, default=100)
    parser.add_argument("--explore", type=float, default=0.2, help="uncertainty sampling: uniform share of picks")
    parser.add_argument("--reference", type=float, default=None, help="in-domain 5-fold APGR of the target")
    parser.add_argument("--jobs", type=int, default=1, help="replays run in parallel processes")
    parser.add_argument("--reference-only", action="store_true",
                        help="only the in-domain reference: the family fitted on every traffic prompt's outcome")
    parser.add_argument("--cached-only", action="store_true",
                        help="read embeddings from .turnout/cache only (a machine without the MiniLM package)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from turnout.embedding.embeddings import cached_embeddings
    from turnout.evals.datasets import load_dataset
    from turnout.evals.replay import embed_lookup
    from turnout.routing.learned import LearnedRouter, fit_final, make_embedder
    from turnout.routing.scorers import make_scorer

    if args.reference_family is None:
        args.reference_family = "hybrid-stats" if args.family == "auto" else args.family
    cache = Path(".turnout/cache")
    target = load_dataset(args.target, args.data_dir)
    needs_emb = args.family == "auto" or make_scorer(args.family).uses_embeddings or make_scorer(
        args.initial_family).uses_embeddings
    encoder: Any = None
    if needs_emb:
        encoder = CachedOnly(args.embedding) if args.cached_only else make_embedder(args.embedding, cache)
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
    from turnout.evals.router_cv import prompt_folds
    from turnout.evals.routing_metrics import evaluate_scores

    ref = []
    for fold in args.folds:  # the same test slices as the replays, the family fitted on all the rest
        train, test = prompt_folds(target.prompts, 5, fold)[fold]
        scorer = make_scorer(args.reference_family)
        tp = [target.prompts[i] for i in train]
        scorer.fit(tp, embed(tp) if (embed and scorer.uses_embeddings) else None, target.weak[train],
                   target.strong[train])
        sp = [target.prompts[i] for i in test]
        s = scorer.predict(sp, embed(sp) if (embed and scorer.uses_embeddings) else None)
        ref.append(evaluate_scores(s, target.weak[test], target.strong[test]).apgr)
    print(f"in-domain reference: {args.reference_family} fitted on all {len(train)} traffic prompts' outcomes, "
          f"same test slices: mean APGR {np.mean(ref):.3f} (sd {np.std(ref):.3f})")
    if args.reference_only:
        return
    means: dict[str, list[float]] = {}
    pgr_means: dict[str, list[float]] = {}
    state = {"args": args, "target": target, "initial": initial, "embed": embed, "source": source}
    jobs = [(s, f) for s in args.samplings for f in args.folds]
    t = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_init, initargs=(state,)) as pool:
            runs = list(pool.map(_one, jobs))
    else:
        _init(state)
        runs = [_one(j) for j in jobs]
    print(f"{len(jobs)} replays in {time.perf_counter() - t:.0f} s")
    for sampling in args.samplings:
        mine = [r for r in runs if r[0] == sampling]
        apgr = np.full((len(mine), len(checkpoints)), np.nan)
        cpt = np.full_like(apgr, np.nan)
        cost = np.full_like(apgr, np.nan)
        pgr = np.full_like(apgr, np.nan)
        for k, (_, _, curve, _) in enumerate(mine):
            for j, c in enumerate(checkpoints):
                apgr[k, j], cpt[k, j] = at(curve, c, "apgr"), at(curve, c, "cpt50")
                cost[k, j], pgr[k, j] = at(curve, c, "shadow_calls"), at(curve, c, "pgr_at_target")
        means[sampling] = [float(np.nanmean(apgr[:, j])) for j in range(len(checkpoints))]
        pgr_means[sampling] = [float(np.nanmean(pgr[:, j])) for j in range(len(checkpoints))]
        final = [curve[-1] for _, _, curve, _ in mine]
        # promotions that made the test APGR worse: than the router before, than the starting one
        worse = below = total = 0
        for _, _, curve, _ in mine:
            for before, after in zip(curve, curve[1:], strict=False):
                if after.promotions > before.promotions:
                    total += 1
                    worse += after.apgr < before.apgr
                    below += after.apgr < curve[0].apgr
        print(f"\n{sampling} sampling: mean over folds {args.folds}; at the end "
              f"{np.mean([p.labels for p in final]):.0f} labels, {np.mean([p.promotions for p in final]):.1f} "
              f"promotions, {np.mean([p.refusals for p in final]):.1f} refusals, strong share on the test slice "
              f"{np.mean([p.escalation_share for p in final]) * 100:.1f}%; of {total} promotions {worse} lowered the "
              f"test APGR, {below} below the starting router's")
        print(f"{'labels':>6} {'APGR':>6} {'sd':>6} {'CPT50':>6} {'PGR@20%':>7} {'sd':>6} {'shadow calls':>12}")
        for j, c in enumerate(checkpoints):
            print(f"{c:>6} {np.nanmean(apgr[:, j]):>6.3f} {np.nanstd(apgr[:, j]):>6.3f} "
                  f"{np.nanmean(cpt[:, j]) * 100:>5.1f}% {np.nanmean(pgr[:, j]):>7.3f} {np.nanstd(pgr[:, j]):>6.3f} "
                  f"{np.nanmean(cost[:, j]):>12.0f}")
    levels = [0.55, 0.60, 0.62, 0.64, 0.65]
    if args.reference is not None:
        levels.append(round(args.reference - 0.03, 3))
    def reach(curve: list[float], level: float) -> int | None:
        return next((c for c, a in zip(checkpoints, curve, strict=True) if not math.isnan(a) and a >= level), None)

    print("\nlabels to reach a mean APGR (first checkpoint at or above):")
    for level in sorted(set(levels)):
        row = [f"{s} {'>' + str(args.budget) if (hit := reach(curve, level)) is None else hit}"
               for s, curve in means.items()]
        print(f"  {level:.3f}: " + ", ".join(row))
    if "uniform" in means:  # the comparison: labels needed for what uniform sampling reaches
        for name, table in (("APGR", means), ("PGR at 20 % strong calls", pgr_means)):
            print(f"\nlabels each sampling needs to reach uniform sampling's mean {name} at N labels (ratio to N):")
            for j, c in enumerate(checkpoints):
                level = table["uniform"][j]
                if c == 0 or math.isnan(level):
                    continue
                row = []
                for s, curve in table.items():
                    hit = reach(curve, level)
                    row.append(f"{s} >{args.budget}" if hit is None else f"{s} {hit} ({hit / c:.2f})")
                print(f"  uniform@{c} = {level:.3f}: " + ", ".join(row))


if __name__ == "__main__":
    main()
