"""Which family and regularisation ``family: auto`` chooses on N labels of a data set, and every
setting's cross-validated APGR (the loop's selection, :func:`turnout.evals.selection.choose`).

    OMP_NUM_THREADS=1 python bench/router_family_choice.py --target gsm8k --labels 300 900

The labels are N random prompts of fold ``--fold``'s training part (the replay's traffic).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/routellm")
    parser.add_argument("--target", default="gsm8k")
    parser.add_argument("--labels", type=int, nargs="+", default=[300, 900])
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--embedding", default="minilm-onnx-fp32", help="same vectors as minilm, faster")
    args = parser.parse_args()

    from turnout.embedding.embeddings import cached_embeddings
    from turnout.evals.datasets import load_dataset
    from turnout.evals.router_cv import prompt_folds
    from turnout.evals.selection import GRID, choose
    from turnout.routing.learned import make_embedder

    cache = Path(".turnout/cache")
    target = load_dataset(args.target, args.data_dir)
    emb = cached_embeddings(make_embedder(args.embedding, cache), target.prompts, cache)
    train, _ = prompt_folds(target.prompts, 5, args.fold)[args.fold]
    for n in args.labels:
        rows = np.random.default_rng(args.fold).permutation(train)[:n]
        best, _, tried = choose(GRID, target.subset(rows), emb[rows])
        options = ", ".join(f"{c.label} {c.apgr:.3f}" for c in tried)
        print(f"{n} labels: chose {best.label}; CV APGR {options}")


if __name__ == "__main__":
    main()
