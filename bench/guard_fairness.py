"""One tenant floods, another keeps asking (issue 23, H1): tenant B's latency unloaded and while
tenant A floods the gateway with prompts just under the size limit, side by side with the ratio
(the target: B's p99 within 2x of its unloaded value). Also the figures the guard code cites.

    python bench/guard_fairness.py [--rounds 3] [--seconds 10] [--flood 4] [--flood-chars 190000]
    python bench/guard_fairness.py --pii 10000 100000 390000   # PII detector, us per character
    python bench/guard_fairness.py --windows                   # each detector on one window
    python bench/guard_fairness.py --process                   # what a killable guard process costs

The gateway runs in keys mode with the default guards (secrets, the PII transformer, injection)
in front of the fake OpenAI-wire upstream (zero latency), the only engine: a request the guards
keep local is a 503. B's requests are short questions sent one at a time; A's are sent from
``--flood`` connections without pause. Everything shares this machine's cores (a loaded 2-core
machine here), so compare figures within one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARA = ("Dear Mr. John Smith, thank you for your order. Please send the invoice to Maria Garcia at "
        "maria.garcia@example.com or call +1 555 010 2233. Our office is at 24 Clarke Avenue, Springfield, IL "
        "62704. The meeting with Acme Corporation in Berlin is on March 3, 2024. Alice Goldberg, the civil "
        "engineer, said the report was fine. We discussed the results of the quarterly review and the next steps. ")


def prose(chars: int) -> str:
    return (PARA * (chars // len(PARA) + 1))[:chars]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def make_key(config: Path, tenant: str) -> str:
    out = subprocess.run([sys.executable, "-m", "turnout", "keys", "--config", str(config), "create", "--tenant",
                          tenant, "--json"], capture_output=True, text=True, check=True)
    return str(json.loads(out.stdout)["key"])


def fairness(args: argparse.Namespace) -> None:
    from turnout.testing.procs import start_server

    tmp = Path(tempfile.mkdtemp(prefix="turnout-fairness-"))
    with start_server("turnout.testing.upstream", "--model", "fake-frontier") as up:
        cfg = {"auth": "keys",
               "engines": {"frontier": {"dialect": "openai", "locality": "remote", "base_url": up.url + "/v1",
                                        "model": "fake-frontier"}},
               "routes": {"auto": {"chain": ["frontier"]}},
               "storage": {"sqlite_path": str(tmp / "turnout.sqlite")}}
        config = tmp / "turnout.yaml"
        config.write_text(yaml.safe_dump(cfg))
        key_a, key_b = make_key(config, "team-a"), make_key(config, "team-b")
        with start_server("turnout", "serve", "--config", str(config), timeout=120) as gw:
            client = httpx.Client(base_url=gw.url, timeout=120)

            def ask(key: str, content: str) -> tuple[int, float]:
                t0 = time.perf_counter()
                r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                json={"model": "auto", "messages": [{"role": "user", "content": content}],
                                      "max_tokens": 8})
                return r.status_code, time.perf_counter() - t0

            asked = itertools.count()

            def b_run(seconds: float) -> list[tuple[int, float]]:
                out: list[tuple[int, float]] = []
                until = time.monotonic() + seconds
                while len(out) < args.requests or time.monotonic() < until:
                    # each question new: the PII detector remembers texts it has seen
                    out.append(ask(key_b, f"Question {next(asked)}: how many legs has a spider? Ask Maria Garcia."))
                return out

            for _ in range(5):
                ask(key_b, "warm up")
            big = prose(args.flood_chars)
            quiet: list[tuple[int, float]] = []
            loaded: list[tuple[int, float]] = []
            a_codes: list[int] = []
            # quiet and flooded phases alternate, so the load of whatever else runs on this machine
            # falls on both alike
            for _ in range(args.rounds):
                quiet += b_run(args.seconds)
                stop = threading.Event()

                def flood(stop: threading.Event = stop) -> None:
                    while not stop.is_set():
                        a_codes.append(ask(key_a, big)[0])

                with ThreadPoolExecutor(args.flood) as pool:
                    floods = [pool.submit(flood) for _ in range(args.flood)]
                    time.sleep(2.0)  # A's prompts are in the guards
                    loaded += b_run(args.seconds)
                    stop.set()
                    for f in floods:
                        f.result()
    q_ms = [s * 1000 for _, s in quiet]
    l_ms = [s * 1000 for _, s in loaded]
    print(f"tenant B: one request at a time, {args.rounds} x {args.seconds:.0f} s quiet and {args.rounds} x "
          f"{args.seconds:.0f} s while A floods, alternating ({len(quiet)} unloaded, {len(loaded)} loaded); "
          f"tenant A: {args.flood} connections of {args.flood_chars:,}-character prompts ({len(a_codes)} sent, "
          f"statuses {sorted(set(a_codes))})")
    print(f"{'':8s} {'unloaded':>10s} {'A floods':>10s} {'ratio':>7s}")
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        a, b = pct(q_ms, q), pct(l_ms, q)
        print(f"{name:8s} {a:8.1f}ms {b:8.1f}ms {b / a:6.2f}x")
    print(f"B statuses: unloaded {sorted({c for c, _ in quiet})}, loaded {sorted({c for c, _ in loaded})}")


def pii(sizes: list[int]) -> None:
    from turnout.guards.pii import PiiGuard

    g = PiiGuard(cache_size=0)
    for n in sizes:
        text = prose(n)
        t0 = time.perf_counter()
        found = g.find(text)
        dt = time.perf_counter() - t0
        print(f"PII {n:>8,} characters: {dt:7.2f} s  {dt / n * 1e6:6.1f} us/char  ({len(found)} findings)")


def windows() -> None:
    from turnout.guards.scanner import OVERLAP_CHARS, WINDOW_CHARS, Scanner

    n = WINDOW_CHARS + 2 * OVERLAP_CHARS
    s = Scanner.default()
    for label, piece in (("prose", prose(n)), ("x x x", ("x " * n)[:n]), ("digits", ("1 2 3 4 5 6 7 8 9 0 " * n)[:n])):
        for g in s.guards:
            cache: Any = getattr(g, "_cache", None)
            times = []
            for i in range(5):
                if cache is not None:
                    cache.clear()
                t0 = time.perf_counter()
                g.inspect(piece[: n - i])
                times.append((time.perf_counter() - t0) * 1000)
            print(f"{label:7s} {g.name:10s} window of {n:,}: median {statistics.median(times):6.1f} ms, "
                  f"max {max(times):6.1f} ms")
    s.close()


def process() -> None:
    """What a guard process that could be killed would cost: start-up (interpreter, imports, models)
    and its resident memory, measured in a fresh interpreter."""
    code = ("import time, resource; t0 = time.perf_counter(); from turnout.guards.scanner import Scanner; "
            "s = Scanner.default(); s.inspect_messages(['warm up Jane Doe']); "
            "print(round(time.perf_counter() - t0, 2), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    print(f"a fresh guard process: {time.perf_counter() - t0:.2f} s to start and load the guards "
          f"({out[0]} s after the interpreter), {out[1]} MB resident")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20, help="tenant B's requests per phase, at least")
    p.add_argument("--seconds", type=float, default=10.0, help="how long B asks per phase, at least")
    p.add_argument("--rounds", type=int, default=3, help="quiet and flooded phases, alternating")
    p.add_argument("--flood", type=int, default=4, help="tenant A's connections")
    p.add_argument("--flood-chars", type=int, default=190_000, help="characters of each of A's prompts")
    p.add_argument("--pii", type=int, nargs="*", help="measure the PII detector on texts of these sizes")
    p.add_argument("--windows", action="store_true", help="measure each detector on one window")
    p.add_argument("--process", action="store_true", help="measure a guard process's start-up and memory")
    args = p.parse_args()
    if args.pii:
        pii(args.pii)
    elif args.windows:
        windows()
    elif args.process:
        process()
    else:
        fairness(args)


if __name__ == "__main__":
    main()
