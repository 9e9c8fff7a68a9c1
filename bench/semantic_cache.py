"""Semantic cache: hit rate and wrong-hit rate on labelled pairs, side by side per setting.

For each pair (a, b) the cache holds a's answer and b is asked: a *hit* is served when the
MiniLM cosine similarity reaches the threshold and (with the check on) ``turnout.cache_check``
finds no mismatch. Per setting it prints

    served     pairs answered from the cache
    wrong      served pairs labelled different meaning (label 0)
    wrong-hit  wrong / served        (the default must stay under 1 in 200 = 0.5%)
    hit rate   served same-meaning pairs / all same-meaning pairs

Data: PAWS-Wiki (``$TURNOUT_SHARED_DATA/paraphrase``, else ../shared/data/paraphrase beside the
checkout): the settings were chosen on the **dev** split only (the grid printed first); the
**test** split is held out and reported once. ``bench/data/cache_pairs.csv`` holds 61
hand-written question pairs (negation, antonyms, swapped roles, numbers, names; and
paraphrases by case, punctuation, function words, inflection, synonyms), written for this
bench before the check was measured on PAWS and never used to choose a setting.

    python bench/semantic_cache.py [--limit N]    # about a minute on 2 cores (embeds ~13k sentences)
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from turnout.cache_check import mismatch  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    threshold: float
    check: bool
    max_edits: int = 0


OLD = Setting("cosine 0.95 only (before)", 0.95, False)
DEFAULT = Setting("default: 0.95 + check", 0.95, True, 0)
LOOSE = Setting("0.90 + check, 2 edits", 0.90, True, 2)
SETTINGS = [DEFAULT, LOOSE, OLD]


def paws_dir() -> Path:
    root = os.environ.get("TURNOUT_SHARED_DATA") or ROOT.parent / "shared" / "data"
    return Path(root) / "paraphrase"


def load(path: Path, limit: int | None) -> list[tuple[str, str, int]]:
    """The pairs, less those whose two texts are identical: any cache, exact ones too, serves
    those, and PAWS labels some of them "different meaning" (label noise, counted here)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = [(r["text_a"], r["text_b"], int(r["label"])) for r in csv.DictReader(f)]
    rows = rows[:limit] if limit else rows
    same = [r for r in rows if r[0] == r[1]]
    if same:
        print(f"{path.name}: left out {len(same)} pairs of identical texts "
              f"({sum(r[2] == 0 for r in same)} of them labelled different meaning)")
    return [r for r in rows if r[0] != r[1]]


def similarities(encode: object, pairs: list[tuple[str, str, int]]) -> np.ndarray:
    texts = sorted({t for a, b, _ in pairs for t in (a, b)})
    vecs = encode.encode(texts)  # type: ignore[attr-defined]
    at = {t: i for i, t in enumerate(texts)}
    return np.array([float(np.dot(vecs[at[a]], vecs[at[b]])) for a, b, _ in pairs])


def score(pairs: list[tuple[str, str, int]], sims: np.ndarray, s: Setting) -> tuple[int, int, float, float]:
    served = wrong = positives = hits = 0
    for (a, b, label), sim in zip(pairs, sims, strict=True):
        positives += label
        ok = sim >= s.threshold and (not s.check or mismatch(b, a, max_edits=s.max_edits) is None)
        if ok:
            served += 1
            wrong += label == 0
            hits += label
    return served, wrong, wrong / served if served else 0.0, hits / positives if positives else 0.0


def upper95(wrong: int, served: int) -> float:
    """Wilson upper bound of the wrong-hit rate (95%): what the sample can still hide."""
    if served == 0:
        return 1.0
    z, p = 1.96, wrong / served
    return (p + z * z / (2 * served) + z * math.sqrt(p * (1 - p) / served + z * z / (4 * served * served))) \
        / (1 + z * z / served)


def table(title: str, pairs: list[tuple[str, str, int]], sims: np.ndarray, settings: list[Setting]) -> None:
    print(f"\n{title}: {len(pairs)} pairs, {sum(p[2] for p in pairs)} same meaning")
    print(f"  {'setting':<28} {'served':>7} {'wrong':>6} {'wrong-hit':>10} {'(95% up to)':>12} {'hit rate':>9}")
    for s in settings:
        served, wrong, wrong_rate, hit_rate = score(pairs, sims, s)
        print(f"  {s.name:<28} {served:>7} {wrong:>6} {wrong_rate:>9.2%} {upper95(wrong, served):>12.2%} "
              f"{hit_rate:>8.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="first N pairs of each PAWS split (default all)")
    args = ap.parse_args()

    from turnout.embedding.minilm_onnx import exact_encoder

    enc = exact_encoder()
    folder = paws_dir()
    dev, test = load(folder / "paws_wiki_dev.csv", args.limit), load(folder / "paws_wiki_test.csv", args.limit)
    questions = load(ROOT / "bench" / "data" / "cache_pairs.csv", None)
    t0 = time.perf_counter()
    dev_s, test_s, q_s = similarities(enc, dev), similarities(enc, test), similarities(enc, questions)
    print(f"embedded {len(dev) + len(test) + len(questions)} pairs in {time.perf_counter() - t0:.0f} s")

    grid = [Setting(f"{t:.2f} + check, {e} edits", t, True, e) for e in (0, 1, 2) for t in (0.80, 0.90, 0.95)]
    grid += [Setting(f"cosine {t:.3f} only", t, False) for t in (0.95, 0.99, 0.999)]
    table("PAWS dev (choosing)", dev, dev_s, grid)
    table("PAWS test (held out)", test, test_s, SETTINGS)
    table("question pairs (bench/data/cache_pairs.csv)", questions, q_s, SETTINGS)

    from turnout.cache_check import content_words

    content_words.cache_clear()
    sample = test[:2000]
    t0 = time.perf_counter()
    for a, b, _ in sample:
        mismatch(b, a)
    print(f"\nthe check: {1e6 * (time.perf_counter() - t0) / len(sample):.0f} us a candidate "
          f"({len(sample)} PAWS pairs, about 20 words each, tokenised afresh)")


if __name__ == "__main__":
    main()
