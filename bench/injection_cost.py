"""Cost of the injection guard per text: a short prompt, 2,000 characters of prose and a 10,000-character
code file; p50/p95 of process CPU time and of wall clock, one thread (issue 25, Must have 7).

    python bench/injection_cost.py [--n 200] [--root PATH]

``--root`` imports ``turnout`` from another checkout (e.g. an older commit unpacked with ``git archive``)
so that before and after are timed by the same script on the same machine, in turn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ["OMP_NUM_THREADS"] = "1"  # onnxruntime's intra-op threads (minilm_onnx.default_threads)

SHORT = "Can you write a Python function that reads a CSV file and sums the second column? #{}"
PROSE = ("The quarterly report shows revenue grew in every region and costs fell after the move to the new "
         "warehouse. The team agreed to review the supplier contracts in March and to ship on Friday. ") * 11
CODE = "".join(f"def handler_{i}(event, context):\n    rows = load(event['path'])\n    total = sum(r['amount'] "
               f"for r in rows if r.get('status') == 'ok')\n    return {{'total': total, 'n': {i}}}\n\n"
               for i in range(70))


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 1 else xs[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="texts timed per kind (the long ones: n / 4)")
    p.add_argument("--root", help="import turnout from this checkout instead")
    a = p.parse_args()
    if a.root:
        sys.path.insert(0, a.root)
    from turnout.guards.injection import InjectionGuard

    t0 = time.perf_counter()
    guard = InjectionGuard()
    print(f"turnout from {a.root or 'this checkout'}: guard ready in {time.perf_counter() - t0:.1f} s")
    for name, make, n in (("short prompt", lambda i: SHORT.format(i), a.n),
                          ("prose, 2,000 chars", lambda i: f"{i} " + PROSE[:2000], max(10, a.n // 4)),
                          ("code, 10,000 chars", lambda i: f"# {i}\n" + CODE[:10_000], max(10, a.n // 4))):
        cpu, wall = [], []
        for i in range(n):
            text = make(i)
            c, w = time.process_time(), time.perf_counter()
            guard.score(text)
            cpu.append((time.process_time() - c) * 1000)
            wall.append((time.perf_counter() - w) * 1000)
        print(f"  {name:<20} CPU p50 {pct(cpu, 50):7.1f} ms  p95 {pct(cpu, 95):7.1f} ms   "
              f"wall p50 {pct(wall, 50):7.1f} ms  p95 {pct(wall, 95):7.1f} ms   (n={n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
