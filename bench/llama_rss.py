"""Where the embedded engine's memory creep comes from: resident memory per request of
llama-cpp-python called directly (no turnout code, one thread), side by side with the same
requests through turnout's ``LlamaCppEngine``.

    python bench/llama_rss.py [--calls 600] [--warmup 100]

Session 3 on this machine (2 cores, llama-cpp-python 0.3.36, SmolLM2-135M, 8 tokens per
answer, defaults): direct 9.6 KB/request, engine 5.5 KB/request in the same process (15.8 run
alone, 8.8 of it with MALLOC_ARENA_MAX=1: glibc arenas of the engine's worker threads).
Python's own heap (tracemalloc) grew by about 24 KB in all: the growth is native, inside
llama.cpp, not turnout's. Reloading the model every 500 requests did not stop it in a
gateway soak (``bench/soak.py --only local``: RSS slope +48 MiB per 10k requests without, +100 with), so it was not
kept. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MSGS = [{"role": "user", "content": "hello there"}]


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def direct(calls: int, warmup: int) -> float:
    from llama_cpp import Llama

    from turnout.engines.smollm2 import smollm2_gguf

    llm = Llama(model_path=str(smollm2_gguf()), n_ctx=2048, n_threads=os.cpu_count() or 1, verbose=False)

    def one() -> None:
        for _ in llm.create_chat_completion(messages=MSGS, max_tokens=8, stream=True):
            pass

    for _ in range(warmup):
        one()
    before = rss_mib()
    for _ in range(calls):
        one()
    grown = rss_mib() - before
    llm.close()
    return grown * 1024 / calls


def engine(calls: int, warmup: int) -> float:
    from turnout.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig
    from turnout.protocol import ChatRequest

    async def run() -> float:
        e = LlamaCppEngine("local", LlamaCppEngineConfig(dialect="llamacpp"))
        await e.start()
        req = ChatRequest(model="auto", messages=MSGS, max_tokens=8)
        for _ in range(warmup):
            await e.chat(req)
        before = rss_mib()
        for _ in range(calls):
            await e.chat(req)
        grown = rss_mib() - before
        await e.close()
        return grown * 1024 / calls

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=100)
    args = ap.parse_args()
    a = direct(args.calls, args.warmup)
    b = engine(args.calls, args.warmup)
    print(f"RSS growth per request over {args.calls} requests after {args.warmup} of warm-up "
          f"(MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset')}):")
    print(f"  llama-cpp-python directly   {a:6.1f} KB/request")
    print(f"  turnout LlamaCppEngine      {b:6.1f} KB/request   ({b / a if a > 0 else float('nan'):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
