"""What one `turnout serve` start costs in CPU: the process's own user + system time from its start until
`/readyz` answers, read from /proc/PID/stat (wall time on a shared machine says little; CPU time is what
the test suite's ~150 gateway starts add up to on 2 cores).

    python bench/startup_cpu.py [--runs 3] [--guards] [--root DIR] [--forkserver]

The configuration is the test suite's common one (tests/conftest.py `hybrid_config`: the embedded
llama.cpp model, an OpenAI-wire and an Anthropic engine; guards off unless ``--guards``); the remote
engines point at a closed port, which a start never calls. ``--root`` starts another checkout's
turnout (e.g. an older commit in a worktree) with this interpreter, for a before/after in one run.
``--forkserver`` starts each gateway as the test suite does (``turnout.testing.procs.preload_forkserver``
with tests/preload.py: forked from a process that imported the gateway once); its first start, which
starts the forkserver, is left out of the figures.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import GUARDS_ON, hybrid_config  # noqa: E402
from turnout.testing.procs import free_port, preload_forkserver, start_server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def one_start(root: Path, config: Path, db: Path) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root)}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "turnout", "serve", "--config", str(config), "--db", str(db),
                             "--port", str(port)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"turnout serve exited with {proc.returncode} before answering /readyz")
            try:
                httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        return cpu_seconds(proc.pid), time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def forked_start(config: Path, db: Path) -> tuple[float, float]:
    t0 = time.monotonic()
    with start_server("turnout", "serve", "--config", str(config), "--db", str(db), timeout=120) as proc:
        httpx.get(f"{proc.url}/readyz", timeout=30).raise_for_status()
        return cpu_seconds(proc.pid), time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--guards", action="store_true", help="guards on (loads the PII model and the injection encoder)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose turnout to start (default: this one)")
    ap.add_argument("--forkserver", action="store_true", help="fork each start as the test suite does")
    args = ap.parse_args()
    if args.forkserver and args.root.resolve() != ROOT:
        ap.error("--forkserver starts this checkout's turnout (the suite's way); --root needs the command line")
    if args.forkserver:
        preload_forkserver(["tests.preload"])
    closed = f"http://127.0.0.1:{free_port()}"
    cfg = hybrid_config(closed, closed, **({"guards": GUARDS_ON} if args.guards else {}))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "turnout.yaml"
        config.write_text(yaml.safe_dump(cfg))
        cpu, wall = [], []
        if args.forkserver:
            forked_start(config, Path(tmp) / "ledger-first.sqlite")  # starts the forkserver
        for i in range(args.runs):
            db = Path(tmp) / f"ledger-{i}.sqlite"
            c, w = forked_start(config, db) if args.forkserver else one_start(args.root.resolve(), config, db)
            cpu.append(c)
            wall.append(w)
            print(f"start {i + 1}: {c:.2f} s CPU, {w:.2f} s wall", flush=True)
    how = "forked from the preloaded forkserver" if args.forkserver else str(args.root)
    print(f"{how}: guards {'on' if args.guards else 'off'}, {args.runs} starts: CPU median "
          f"{statistics.median(cpu):.2f} s (min {min(cpu):.2f}), wall median {statistics.median(wall):.2f} s; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
