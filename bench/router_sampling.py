"""Which prompts to label: sampling strategies compared without the loop around them.

    OMP_NUM_THREADS=1 python bench/router_sampling.py --target gsm8k --family hybrid-stats
    OMP_NUM_THREADS=1 python bench/router_sampling.py --target gsm8k --family tfidf-lr --seeds 3

``bench/router_replay.py`` measures the whole learning loop (threshold, shadow share per period,
the promotion gate), whose gate decisions on small held-out slices move a curve by a few
hundredths. This benchmark isolates the sampling: pool-based, from ``--start`` uniformly drawn
labels, ``--batch`` labels at a time are picked from the unlabelled training prompts of a fold by
each strategy, the family is refitted on every label so far (no gate, no holdout), and its APGR on
the fold's untouched test prompts is recorded. Strategies:

- ``uniform``: at random;
- ``threshold``: nearest the router's 80th score percentile (the serving threshold at 20 % strong
  calls): what the gateway's uncertainty sampling does, here without its uniform share;
- ``spread``: evenly over the router's score quantiles (a stratified sample of its ranking);
- ``committee``: largest spread of scores among four bootstrap refits (query by committee).

Printed: mean APGR over folds x seeds per label count, and how many labels each strategy needs to
reach what uniform sampling reaches, as a ratio (below 0.5 would be "half the labels").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGIES = ("uniform", "threshold", "spread", "committee")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/routellm")
    parser.add_argument("--target", default="gsm8k")
    parser.add_argument("--family", default="hybrid-stats")
    parser.add_argument("--embedding", default="minilm-onnx-fp32")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds", type=int, default=1, help="start draws per fold")
    parser.add_argument("--start", type=int, default=25)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[50, 100, 150, 200, 300, 400, 600, 800])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from turnout.embedding.embeddings import cached_embeddings
    from turnout.evals.datasets import load_dataset
    from turnout.evals.router_cv import prompt_folds
    from turnout.evals.routing_metrics import evaluate_scores
    from turnout.routing.learned import make_embedder
    from turnout.routing.scorers import make_scorer

    data = load_dataset(args.target, args.data_dir)
    cache = Path(".turnout/cache")
    emb = None
    if make_scorer(args.family).uses_embeddings:
        emb = cached_embeddings(make_embedder(args.embedding, cache), data.prompts, cache)  # type: ignore[arg-type]

    def fit(rows: np.ndarray):  # type: ignore[no-untyped-def]
        scorer = make_scorer(args.family)
        scorer.fit([data.prompts[i] for i in rows], emb[rows] if emb is not None else None, data.weak[rows],
                   data.strong[rows])
        return scorer

    def predict(scorer, rows: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.asarray(scorer.predict([data.prompts[i] for i in rows], emb[rows] if emb is not None else None))

    def pick(strategy: str, scorer, labelled: list[int], rest: np.ndarray,  # type: ignore[no-untyped-def]
             rng: np.random.Generator) -> np.ndarray:
        n = min(args.batch, len(rest))
        if strategy == "uniform":
            return rng.choice(rest, size=n, replace=False)
        s = predict(scorer, rest)
        if strategy == "threshold":
            order = np.argsort(np.abs(s - np.quantile(s, 0.8)), kind="stable")
        elif strategy == "spread":
            order = np.argsort(s, kind="stable")[np.linspace(0, len(s) - 1, n).astype(int)]
        else:  # committee
            lab = np.asarray(labelled)
            votes = [predict(fit(rng.choice(lab, size=len(lab), replace=True)), rest) for _ in range(4)]
            order = np.argsort(-np.std(np.asarray(votes), axis=0), kind="stable")
        return rest[order[:n]]

    top = max(args.checkpoints)
    print(f"{args.target}: {len(data)} prompts; family {args.family}; folds {args.folds} x {args.seeds} seeds; "
          f"start {args.start} uniform labels, then {args.batch} per refit")
    curves: dict[str, list[dict[int, float]]] = {s: [] for s in args.strategies}
    t0 = time.perf_counter()
    for fold in args.folds:
        train, test = (np.asarray(x) for x in prompt_folds(data.prompts, 5, 0)[fold])
        for seed in range(args.seeds):
            for strategy in args.strategies:
                rng = np.random.default_rng(1000 * fold + seed)
                labelled = [int(i) for i in rng.choice(train, size=args.start, replace=False)]
                curve: dict[int, float] = {}
                while True:
                    scorer = fit(np.asarray(labelled))
                    if len(labelled) in args.checkpoints:
                        curve[len(labelled)] = evaluate_scores(predict(scorer, test), data.weak[test],
                                                               data.strong[test]).apgr
                    rest = np.setdiff1d(train, labelled)
                    if len(labelled) >= top or not len(rest):
                        break
                    labelled += [int(i) for i in pick(strategy, scorer, labelled, rest, rng)]
                curves[strategy].append(curve)
            print(f"  fold {fold} seed {seed} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    means = {s: {c: float(np.nanmean([cv.get(c, np.nan) for cv in cs])) for c in args.checkpoints}
             for s, cs in curves.items()}
    sds = {s: {c: float(np.nanstd([cv.get(c, np.nan) for cv in cs])) for c in args.checkpoints}
           for s, cs in curves.items()}
    print(f"\nmean APGR on the test folds (sd over {len(args.folds) * args.seeds} runs)")
    print(f"{'labels':>6} " + " ".join(f"{s:>16}" for s in args.strategies))
    for c in args.checkpoints:
        print(f"{c:>6} " + " ".join(f"{means[s][c]:>8.3f} ({sds[s][c]:.3f})" for s in args.strategies))
    if "uniform" in means:
        print("\nlabels to reach uniform sampling's mean APGR at N labels (ratio to N):")
        for c in args.checkpoints:
            level = means["uniform"][c]
            row = []
            for s in args.strategies:
                hit = next((k for k in args.checkpoints if means[s][k] >= level), None)
                row.append(f"{s} >{top}" if hit is None else f"{s} {hit} ({hit / c:.2f})")
            print(f"  uniform@{c} = {level:.3f}: " + ", ".join(row))


if __name__ == "__main__":
    main()
