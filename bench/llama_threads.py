"""The embedded engine's decode speed by llama.cpp thread count, on an idle CPU and with
other work on the same cores (busy processes standing in for the gateway's own guards,
embeddings and other tenants' processes).

    python bench/llama_threads.py [--threads 1 2] [--busy 0 1 2] [--tokens 48] [--runs 5]

llama.cpp's worker threads spin while they wait for each other, so a thread that loses its
core to another process stalls every token. Each row: tokens per second (median over runs)
and the worst single run; the last column is the ratio to the first thread count in the
same load. Figures are printed, never asserted.

Session 5 on this machine (2 cores, idle before the run; SmolLM2-135M, 48 tokens, 5 runs),
tok/s p50 with 1 / 2 threads: idle 54.7 / 64.9 (2 threads 1.19x), one busy process 41.2 /
20.1 (0.49x), two busy processes 28.3 / 2.5 (0.09x). Hence the engine's default of half the
CPUs: a little slower on an idle machine, never the collapse when other work shares the cores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = ["Explain what a railway turnout does.", "Write three lines about the sea.",
           "List four uses of a spreadsheet.", "Why is the sky blue?", "Describe a good breakfast."]


def _spin(stop: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def decode_rates(n_threads: int, tokens: int, runs: int) -> list[float]:
    from llama_cpp import Llama

    from turnout.engines.smollm2 import smollm2_gguf

    llm = Llama(model_path=str(smollm2_gguf()), n_ctx=1024, n_threads=n_threads, verbose=False)
    llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4)  # warm up
    rates = []
    for i in range(runs):
        msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        start = time.perf_counter()
        out = llm.create_chat_completion(msgs, max_tokens=tokens, temperature=0.0, seed=i)
        rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
    llm.close()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="busy processes running alongside")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start; "
          f"{args.tokens} tokens per run, {args.runs} runs")
    print(f"{'busy':>4} {'threads':>7} {'tok/s p50':>10} {'worst':>8} {'vs first':>9}")
    for busy in args.busy:
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            first = None
            for n in args.threads:
                rates = decode_rates(n, args.tokens, args.runs)
                p50 = statistics.median(rates)
                first = first or p50
                print(f"{busy:>4} {n:>7} {p50:>10.1f} {min(rates):>8.1f} {p50 / first:>8.2f}x", flush=True)
        finally:
            stop.set()
            for p in spinners:
                p.join()


if __name__ == "__main__":
    main()
