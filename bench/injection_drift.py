"""The shipped int8 injection guard against the training run's float scores of the same texts
(issue 25: the int8 ONNX encoder must keep the float model's decisions).

    python bench/injection_drift.py --data ../shared/data [--bundle DIR] [--run DIR]

Needs a bundle and a training run (``python -m turnout.evals.injection_finetune bundle|train``); texts on which
a phrase heuristic fires are left out (their score is 1.0 either way), and so are texts over 3,000 characters.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", default="build/injection-bundle")
    p.add_argument("--run", default="build/injection-run")
    p.add_argument("--n", type=int, default=250)
    a = p.parse_args()
    import json
    from pathlib import Path

    from turnout.evals import injection_data as D
    from turnout.guards.injection import HEURISTIC_BLOCK, InjectionGuard, heuristic_score, views

    cap = int(json.loads((Path(a.bundle) / "meta.json").read_text())["cap"])
    rows = D.load(a.data, report_only=True, cap=cap)
    final = np.load(Path(a.run) / "final.npz")["score"]
    if len(final) != len(rows):
        raise SystemExit(f"{a.run}: {len(final)} scores for {len(rows)} rows: the run is not of this bundle")
    guard = InjectionGuard()
    rng = np.random.default_rng(1)
    idx = [int(i) for i in rng.permutation(len(rows)) if len(rows[i].text) < 3000
           and max(heuristic_score(v) for v in views(rows[i].text)) < HEURISTIC_BLOCK][: a.n]
    int8 = np.array([guard.score(rows[i].text) for i in idx])
    flt = final[idx]
    t = guard.block_threshold
    diff = np.abs(int8 - flt)
    print(f"{len(idx)} texts: correlation {np.corrcoef(int8, flt)[0, 1]:.4f}, mean |diff| {diff.mean():.4f}, "
          f"max {diff.max():.3f}; same block decision at {t:.4f}: {((int8 >= t) == (flt >= t)).mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
