"""MiniLM sentence-embedding latency on CPU, one prompt per call, for each way turnout runs it.

    python bench/embedding_latency.py [--datasets mmlu gsm8k] [--n 200] [--threads 1]
        [--encoders numpy onnx-fp32 onnx-int8 static]

Encoders: ``numpy`` (MiniLMEncoder, the full model in float32 numpy), ``onnx-fp32`` and
``onnx-int8`` (OnnxMiniLM, the same model in onnxruntime), ``static`` (StaticMiniLM, the
distilled token table). ``--n`` prompts are drawn (fixed seed) from each RouteLLM data set; every
encoder embeds each prompt alone, as the gateway does per request. Printed per encoder: model
load time (files already built and cached: a first build is timed and reported apart), p50 / p99 /
mean per prompt, p50 relative to numpy, and the cosine of each embedding with the numpy one.
``--full-fidelity`` also compares whole data sets (every prompt, through the embedding cache that
``turnout eval router`` fills, ``.turnout/cache`` or ``$TURNOUT_CACHE_DIR``: slow when not cached).
``--threads`` caps numpy's BLAS (threadpoolctl) and onnxruntime's intra-op threads alike. It
prints figures and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENCODERS = ("numpy", "onnx-fp32", "onnx-int8", "static")


def _loader(name: str, threads: int, static_cache: Path) -> Callable[[], object]:
    from turnout.embedding.embeddings import MiniLMEncoder, StaticMiniLM
    from turnout.embedding.minilm_onnx import OnnxMiniLM

    if name == "numpy":
        return MiniLMEncoder
    if name == "onnx-fp32":
        return lambda: OnnxMiniLM(int8=False, threads=threads)
    if name == "onnx-int8":
        return lambda: OnnxMiniLM(int8=True, threads=threads)
    if name == "static":
        return lambda: StaticMiniLM(cache_dir=static_cache)
    raise ValueError(name)


def _probe(data_dir: Path, datasets: list[str], n: int) -> list[tuple[str, str]]:
    from turnout.evals.datasets import load_dataset

    out = []
    for name in datasets:
        data = load_dataset(name, data_dir)
        rng = np.random.default_rng(0)
        for i in rng.choice(len(data), size=min(n, len(data)), replace=False):
            out.append((name, data.prompts[int(i)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/routellm")
    parser.add_argument("--datasets", nargs="+", default=["mmlu", "gsm8k"])
    parser.add_argument("--n", type=int, default=200, help="prompts per data set")
    parser.add_argument("--threads", type=int, default=1, help="BLAS / onnxruntime threads (default 1)")
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    parser.add_argument("--full-fidelity", action="store_true",
                        help="cosine of fp32 / int8 / static with numpy over every prompt of --datasets")
    parser.add_argument("--static-cache", type=Path, default=Path(".turnout/cache"),
                        help="folder of the static token table (default .turnout/cache)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    probe = _probe(args.data_dir, args.datasets, args.n)
    texts = [t for _, t in probe]
    sets = np.array([d for d, _ in probe])
    print(f"{len(probe)} prompts ({', '.join(f'{d} {int((sets == d).sum())}' for d in args.datasets)}), "
          f"median {statistics.median(len(t) for t in texts):.0f} chars; threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.1f}")

    results: dict[str, dict[str, float]] = {}
    vectors: dict[str, np.ndarray] = {}
    for name in args.encoders:
        make = _loader(name, args.threads, args.static_cache)
        t = time.perf_counter()
        make()  # builds and caches what is missing (ONNX graph, static table): not a load
        first = time.perf_counter() - t
        t = time.perf_counter()
        encoder = make()
        load = time.perf_counter() - t
        encoder.encode([texts[0]])  # type: ignore[attr-defined]  # warm-up
        ms, rows = [], []
        for text in texts:
            t = time.perf_counter()
            rows.append(encoder.encode([text])[0])  # type: ignore[attr-defined]
            ms.append((time.perf_counter() - t) * 1000)
        arr = np.asarray(ms)
        vectors[name] = np.stack(rows)
        results[name] = {"load": load * 1000, "first": first * 1000, "p50": float(np.percentile(arr, 50)),
                         "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())}
        print(f"  {name}: done (first construction {first:.1f} s)", file=sys.stderr)

    base = results.get("numpy")
    print(f"{'encoder':<10} {'load ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p50 vs numpy':>13}  "
          f"cosine with numpy (mean / min{''.join(f' / {d} min' for d in args.datasets)})")
    for name, r in results.items():
        ratio = f"{base['p50'] / r['p50']:.2f}x" if base else "-"
        cos = "-"
        if "numpy" in vectors:
            c = (vectors[name] * vectors["numpy"]).sum(axis=1)
            per_set = "".join(f" / {c[sets == d].min():.6f}" for d in args.datasets)
            cos = f"{c.mean():.6f} / {c.min():.6f}{per_set}"
        print(f"{name:<10} {r['load']:>8.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['mean']:>8.2f} {ratio:>13}  {cos}")
    print("p50 vs numpy: how many times faster than the numpy forward pass at the median")
    if "static" in results:
        print("static is another embedding (a mean of per-token vectors): its cosine with numpy measures no fidelity")
    if args.full_fidelity:
        full_fidelity(args)


def full_fidelity(args: argparse.Namespace) -> None:
    from turnout.embedding.embeddings import cached_embeddings
    from turnout.evals.datasets import load_dataset
    from turnout.evals.router_cli import default_cache_dir

    others = [e for e in args.encoders if e != "numpy"]
    print(f"cosine with numpy over whole data sets: mean / 1st percentile / min ({', '.join(others)})")
    for name in args.datasets:
        data = load_dataset(name, args.data_dir)
        ref = cached_embeddings(_loader("numpy", args.threads, args.static_cache)(), data.prompts,
                                default_cache_dir())  # type: ignore[arg-type]
        cells = []
        for other in others:
            got = cached_embeddings(_loader(other, args.threads, args.static_cache)(), data.prompts,
                                    default_cache_dir())  # type: ignore[arg-type]
            c = (ref * got).sum(axis=1)
            cells.append(f"{other} {c.mean():.6f} / {np.percentile(c, 1):.6f} / {c.min():.6f}")
        print(f"  {name} ({len(data)}): " + "; ".join(cells))


if __name__ == "__main__":
    main()
