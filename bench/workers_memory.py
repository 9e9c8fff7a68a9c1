"""What each gateway worker costs in memory: `turnout serve --workers N` with the embedded setup
(llama.cpp SmolLM2 in each worker, guards as configured), after one chat answered by each worker.

    python bench/workers_memory.py [--workers 1 2] [--config FILE]

For each worker process, from /proc/PID/smaps_rollup: RSS, PSS (shared pages divided among the
processes that map them: the sum over the workers is what they cost the machine together) and
private memory (what the worker alone holds: its KV cache, compute buffers, Python heap, guard
models). The GGUF weights are memory-mapped by llama.cpp, so their pages are shared by every
worker (in RSS once per worker, in PSS once in all). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turnout.testing.procs import start_server  # noqa: E402


def rollup(pid: int) -> dict[str, float]:
    """MiB by field of /proc/PID/smaps_rollup."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        out[name] = int(value.split()[0]) / 1024
    return out


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def measure(n: int, config: str | None, tmp: Path) -> list[tuple[int, dict[str, float]]]:
    args = ["serve", "--workers", str(n), "--db", str(tmp / f"m{n}.sqlite"), "--log-level", "warning"]
    if config:
        args += ["--config", config]
    proc = start_server("turnout", *args, timeout=300, cwd=str(tmp))
    try:
        answered: set[str] = set()
        deadline = time.monotonic() + 120
        while len(answered) < n and time.monotonic() < deadline:  # one chat through each worker
            with httpx.Client(base_url=proc.url, timeout=120) as client:
                pid = client.get("/healthz").headers["x-turnout-worker"]
                if pid in answered:
                    continue
                r = client.post("/v1/chat/completions", json={
                    "model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]})
                r.raise_for_status()
                answered.add(pid)
        workers = [int(p) for p in answered] if n > 1 else [proc.pid]
        return [(pid, rollup(pid)) for pid in workers] + ([(proc.pid, rollup(proc.pid))] if n > 1 else [])
    finally:
        proc.stop(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--config", help="turnout.yaml (default: the embedded setup)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="turnout-workers-mem-"))
    print(f"{'workers':>7} {'process':<12}{'RSS MiB':>9}{'PSS MiB':>9}{'private MiB':>13}{'shared MiB':>12}")
    for n in args.workers:
        rows = measure(n, args.config, tmp)
        for i, (pid, m) in enumerate(rows):
            role = "supervisor" if n > 1 and i == len(rows) - 1 else f"worker {i + 1}"
            private = m["Private_Clean"] + m["Private_Dirty"]
            shared = m["Shared_Clean"] + m["Shared_Dirty"]
            print(f"{n:>7} {role:<12}{m['Rss']:>9.0f}{m['Pss']:>9.0f}{private:>13.0f}{shared:>12.0f}")
        print(f"{n:>7} {'all (PSS)':<12}{'':>9}{sum(m['Pss'] for _, m in rows):>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
