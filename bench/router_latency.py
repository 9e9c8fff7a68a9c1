"""Router decision latency on CPU: load time and per-request score() time, one prompt at a time.

    python bench/router_latency.py [--dataset mmlu] [--n 200] [--embedding minilm|minilm-static|minilm-onnx[-fp32]]
    python bench/router_latency.py --torch     # under a Python that has torch + sentence-transformers

Trains each family on the data set (fit time is not the point), then times ``LearnedRouter.score``
for single prompts drawn from it, as the gateway calls it: p50 / p99 / mean in milliseconds.
It also times the MiniLM numpy encoder alone (the part that dominates the embedding routers)
and, when torch and sentence-transformers are importable, the same model through them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _percentiles(ms: list[float]) -> str:
    arr = np.asarray(ms)
    return f"p50 {np.percentile(arr, 50):7.2f} ms  p99 {np.percentile(arr, 99):7.2f} ms  mean {arr.mean():7.2f} ms"


def _time_calls(fn, prompts: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    fn(prompts[0])  # warm-up
    out = []
    for p in prompts:
        t = time.perf_counter()
        fn(p)
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench_routers(data_dir: Path, dataset: str, n: int, families: list[str], embedding: str) -> None:
    from turnout.evals.datasets import load_dataset
    from turnout.routing.learned import LearnedRouter, fit_final, make_embedder
    from turnout.weights import minilm_available

    data = load_dataset(dataset, data_dir)
    rng = np.random.default_rng(0)
    probe = [data.prompts[i] for i in rng.choice(len(data), size=min(n, len(data)), replace=False)]
    lengths = [len(p) for p in probe]
    print(f"{dataset}: {len(data)} rows; probe {len(probe)} prompts, median {statistics.median(lengths):.0f} chars")
    emb = None
    encoder = None
    if minilm_available():
        from turnout.embedding.embeddings import cached_embeddings

        t = time.perf_counter()
        encoder = make_embedder(embedding)
        print(f"{embedding} encoder load: {(time.perf_counter() - t) * 1000:.0f} ms")
        emb = cached_embeddings(encoder, data.prompts, Path(".turnout/cache"))  # type: ignore[arg-type]
        print(f"  encode() alone, 1 prompt:      {_percentiles(_time_calls(lambda p: encoder.encode([p]), probe))}")
        short = [p[:200] for p in probe]
        print(f"  encode() alone, <=200 chars:   {_percentiles(_time_calls(lambda p: encoder.encode([p]), short))}")
    for family in families:
        scorer = fit_final(family, data.prompts, emb, data.weak, data.strong) if (
            emb is not None or family == "tfidf-lr") else None
        if scorer is None:
            print(f"{family:12s} skipped: embedding model not installed")
            continue
        router = LearnedRouter(scorer, 0.5, {"embedding": embedding}, embedder=encoder)
        path = router.save(Path(".turnout/cache") / f"bench-{dataset}-{family}-{embedding}.npz")
        t = time.perf_counter()
        loaded = LearnedRouter.load(path, embedder=encoder)
        load_ms = (time.perf_counter() - t) * 1000
        size = path.stat().st_size / 1e6
        print(f"{family:12s} score(): {_percentiles(_time_calls(loaded.score, probe))}  "
              f"(artifact {size:.1f} MB, load {load_ms:.0f} ms)")


def bench_torch(data_dir: Path, dataset: str, n: int) -> None:
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("torch / sentence-transformers not importable: torch comparison skipped")
        return
    from turnout.embedding.embeddings import MiniLMEncoder
    from turnout.evals.datasets import load_dataset
    from turnout.weights import minilm_dir

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data = load_dataset(dataset, data_dir)
    probe = data.prompts[:n]
    t = time.perf_counter()
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    print(f"sentence-transformers (torch {torch.__version__}) load: {(time.perf_counter() - t) * 1000:.0f} ms")
    print(f"  encode() 1 prompt: {_percentiles(_time_calls(lambda p: st.encode([p]), probe))}")
    t = time.perf_counter()
    encoder = MiniLMEncoder()
    print(f"numpy MiniLM encoder load: {(time.perf_counter() - t) * 1000:.0f} ms")
    print(f"  encode() 1 prompt: {_percentiles(_time_calls(lambda p: encoder.encode([p]), probe))}")
    ref = st.encode(probe, normalize_embeddings=True)
    ours = encoder.encode(probe)
    cos = (ref * ours).sum(axis=1)
    print(f"  agreement with the numpy encoder over {len(probe)} prompts: cosine min {cos.min():.6f}, "
          f"mean {cos.mean():.6f}; max abs diff {np.abs(ref - ours).max():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/routellm")
    parser.add_argument("--dataset", default="mmlu")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--families", nargs="+", default=["tfidf-lr", "emb-knn", "hybrid"])
    from turnout.embedding.embeddings import DEFAULT_EMBEDDING, EMBEDDINGS

    # the default of `turnout eval router`, so latency and quality figures describe one router
    parser.add_argument("--embedding", choices=EMBEDDINGS, default=DEFAULT_EMBEDDING)
    parser.add_argument("--torch", action="store_true", help="also time torch + sentence-transformers if present")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.torch:
        bench_torch(args.data_dir, args.dataset, args.n)
    else:
        bench_routers(args.data_dir, args.dataset, args.n, args.families, args.embedding)


if __name__ == "__main__":
    main()
