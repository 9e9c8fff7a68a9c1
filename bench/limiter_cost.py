"""What exact limits and budgets cost per request, by backend: the in-memory counters of one
gateway process, the SQLite file that several worker processes share (``turnout serve --workers
N`` without Redis), and Redis (when one answers on 127.0.0.1:6379).

    python bench/limiter_cost.py [--requests 3000] [--processes 1 2]

Each request of a key with limits makes the gateway's three limiter steps: admit (requests and
tokens per minute), reserve (its estimated cost against the USD budgets) and settle (the actual
cost). Printed: CPU microseconds per request (user + system time of the processes doing the
steps), wall microseconds per request, and with ``--processes 2`` two processes hammering one
file (or one Redis) at once. Figures are printed, never asserted; the machine's other work
inflates wall time, CPU time much less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turnout.governance.keys import Limits  # noqa: E402
from turnout.governance.limits import Limiter, MemoryLimiter, RedisLimiter, SQLiteLimiter  # noqa: E402

LIMITS = Limits(rpm=10**9, tpm=10**12, usd_per_day=10**6, usd_per_month=10**7)


def make(backend: str, target: str) -> Limiter:
    if backend == "memory":
        return MemoryLimiter()
    if backend == "sqlite":
        return SQLiteLimiter(target)
    return RedisLimiter("redis://127.0.0.1:6379/0", prefix=target)


async def steps(lim: Limiter, n: int, key: str) -> None:
    for _ in range(n):
        r = await lim.check_and_reserve(key, LIMITS, tokens_estimate=64, cost_estimate=0.0)
        await lim.extend(r, LIMITS, cost_estimate=0.0004)
        await lim.settle(r, actual_tokens=40, actual_cost=0.0003)


def worker(backend: str, target: str, n: int, key: str, out: Any) -> None:
    async def go() -> tuple[float, float]:
        lim = make(backend, target)
        await steps(lim, 50, key)  # warm-up: connections, prepared statements
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        await steps(lim, n, key)
        wall = time.perf_counter() - t0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        await lim.close()
        return (u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime), wall

    out.send(asyncio.run(go()))


def measure(backend: str, target: str, n: int, processes: int) -> tuple[float, float]:
    ctx = get_context("spawn")
    pipes, procs = [], []
    for i in range(processes):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker, args=(backend, target, n, "bench-key", child))
        p.start()
        pipes.append(parent)
        procs.append(p)
    results = [pipe.recv() for pipe in pipes]
    for p in procs:
        p.join()
    cpu = sum(r[0] for r in results)
    wall = max(r[1] for r in results)
    return cpu / (n * processes) * 1e6, wall / (n * processes) * 1e6


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="requests per process")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="turnout-limiter-")
    backends = ["memory", "sqlite"] + (["redis"] if redis_up() else [])
    print(f"{'backend':<10}{'processes':>10}{'CPU us/req':>12}{'wall us/req':>13}")
    for backend in backends:
        for procs in args.processes:
            if backend == "memory" and procs > 1:
                continue  # one process's counters: not shared, so not comparable
            target = os.path.join(tmp, f"{procs}.sqlite") if backend == "sqlite" else f"bench:{os.getpid()}:{procs}"
            cpu, wall = measure(backend, target, args.requests, procs)
            print(f"{backend:<10}{procs:>10}{cpu:>12.1f}{wall:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
