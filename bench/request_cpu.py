"""The gateway's own CPU per request at saturation, per pipeline step, for this checkout and
(``--root``) another one in the same run, side by side.

    python bench/request_cpu.py [--duration 8] [--concurrency 50] [--root /work/main] [--rate 500]

Setup (as bench/overhead.py's, guards off): the zero-latency OpenAI-wire stand-in upstream
(turnout.testing.upstream), one ``turnout serve`` process per checkout with an API key with
limits, rules routing, the SQLite ledger with the audit chain and Prometheus metrics; wrk
drives ``POST /v1/chat/completions`` at ``--concurrency`` connections.

Each checkout gets ``--rounds`` plain runs (alternated between checkouts; the median counts) and
one sampled run:

1. **Plain** (nothing added to turnout's work): requests/s, the gateway process's CPU per request
   (user + system time from /proc, all its threads), and the garbage collector's own CPU time per
   request by generation (``gc.callbacks`` installed by the bench's bootstrap).
2. **Sampled**: the same load with an in-process sampling profiler (a thread that reads
   ``sys._current_frames()`` every 1/``--rate`` s, started by the bench's bootstrap, not by
   turnout). Each sample of a thread that is not idle (blocked in the event loop's ``select``, a
   queue's ``get`` or a lock) is given to a step: the innermost frame of the stack that matches a
   rule of ``STEPS`` (turnout's pipeline steps and server functions, and the HTTP libraries, so
   uvicorn's and aiohttp's work is theirs wherever it is called from); what matches nothing is
   ``other``.

Each thread's CPU is measured in the plain runs (``/proc/self/task``: the event loop's thread,
the ledger writer's, the worker threads of ``asyncio.to_thread``), and shared out over the steps
by that thread's samples: a step's CPU us/request is **derived from a profile**, its thread's
total is measured, and the rows add up to the process's measured total (what no live thread
accounts for, e.g. threads that ended, is its own row). uvloop's C code (sockets, httptools) has
no Python frame: its time is spread over the event loop thread's rows. The sampler costs the
gateway about a third more CPU (its run's CPU per request is printed too); samples are taken
when the sampler gets the GIL (switch interval 0.2 ms while sampling), so read shares.

Everything shares this machine's cores: compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import BODY, cpu_seconds, wrk  # noqa: E402
from turnout.testing.procs import Proc, start_server  # noqa: E402

# (path suffix or package folder, function names or None for any) -> step; the innermost frame
# of a sample that matches one of these names its step. Library rules come first in no order:
# the innermost frame decides, so uvicorn's send called from the endpoint is uvicorn's.
STEPS: list[tuple[str, frozenset[str] | None, str]] = [
    ("/uvicorn/", None, "HTTP server (uvicorn, h11/httptools)"),
    ("/h11/", None, "HTTP server (uvicorn, h11/httptools)"),
    ("/httptools/", None, "HTTP server (uvicorn, h11/httptools)"),
    ("/starlette/", None, "starlette Request/Response"),
    ("/aiohttp/", None, "HTTP client (aiohttp)"),
    ("/yarl/", None, "HTTP client (aiohttp)"),
    ("/multidict/", None, "HTTP client (aiohttp)"),
    ("turnout/server/app.py", None, "server fast path"),
    ("turnout/server/exchange.py", frozenset({"read_headers"}), "read headers"),
    ("turnout/server/exchange.py", None, "endpoint glue (disconnect watch)"),
    ("turnout/server/chat.py", None, "endpoint glue (disconnect watch)"),
    ("turnout/server/body.py", frozenset({"validate"}), "validate (pydantic ChatRequest)"),
    ("turnout/server/body.py", None, "read body + JSON parse"),
    ("turnout/server/wire.py", None, "answer body + headers"),
    ("turnout/pipeline.py", frozenset({"authenticate"}), "authenticate"),
    ("turnout/pipeline.py", frozenset({"admit", "tokens"}), "admit"),
    ("turnout/pipeline.py", frozenset({"ground"}), "ground"),
    ("turnout/pipeline.py", frozenset({"inspect"}), "inspect"),
    ("turnout/pipeline.py", frozenset({"cached"}), "cache"),
    ("turnout/pipeline.py", frozenset({"decide", "facts", "able"}), "decide"),
    ("turnout/pipeline.py", frozenset({"protect"}), "protect"),
    ("turnout/pipeline.py", frozenset({"reserve"}), "reserve"),
    ("turnout/pipeline.py", frozenset({"stack", "may_spill"}), "call: build engine stack"),
    ("turnout/pipeline.py", frozenset({"conclude", "scan", "keep"}), "conclude"),
    ("turnout/pipeline.py", frozenset({"_begin"}), "begin (metrics, span)"),
    ("turnout/pipeline.py", frozenset({"_end", "_recorded", "record", "drain"}), "record"),
    ("turnout/pipeline.py", frozenset({"learn"}), "learn"),
    ("turnout/pipeline.py", None, "pipeline glue"),
    ("turnout/recorder.py", None, "record"),
    ("turnout/ledger/writer.py", frozenset({"record"}), "record"),
    ("turnout/ledger/", None, "ledger writer thread (SQLite, audit chain)"),
    ("turnout/engines/openai_http.py", frozenset({"_payload"}), "call: upstream request body"),
    ("turnout/engines/openai_http.py", frozenset({"_result"}), "call: upstream answer"),
    ("turnout/engines/http.py", None, "call: upstream answer"),
    ("turnout/engines/", None, "call: engine stack"),
    ("turnout/tracing.py", None, "pipeline glue"),
    ("bootstrap.py", frozenset({"on_gc"}), "garbage collection"),  # the bench's callback, at a collection's end
]
# the main thread's innermost Python frame while uvloop runs (its C code: sockets, HTTP parsing by
# httptools, callbacks' scheduling) and while it waits in epoll: not told apart by a Python sampler
LOOP_IN_C = "asyncio/runners.py:run"
REST = "threads that ended during the run, process-wide work"
LIBS = ("bootstrap.py", "uvicorn", "h11", "httptools", "starlette", "aiohttp", "yarl", "multidict", "pydantic",
        "prometheus_client", "orjson", "asyncio", "sqlite3", "logging", "opentelemetry", "turnout", "json",
        "concurrent", "threading")

# Run in the gateway's process: sys.path gets the checkout, a control thread starts, then
# `turnout serve` runs as `python -m turnout` would. While the file <out>.gc exists the garbage
# collector's time is summed (written to <out>.gc.json when it goes); while <out>.on exists the
# threads are sampled (written to <out> when it goes). Stacks are kept as code objects and named
# at the end, so the sampler makes little garbage of its own.
BOOTSTRAP = r'''
import collections, gc, json, os, runpy, sys, threading, time
root, out, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.path.insert(0, root)
sys.argv = ["turnout", *sys.argv[4:]]
IDLE = {("selectors.py", "select"), ("queue.py", "get"), ("threading.py", "wait"), ("writer.py", "next_batch"),
        ("thread.py", "_worker"), ("threading.py", "_wait_for_tstate_lock"), ("threading.py", "join")}
gc_on = [False]
gc_time = [0.0, 0.0, 0.0]
gc_count = [0, 0, 0]
gc_t = [0.0]

def on_gc(phase, info):  # the collector's own CPU time, by generation (collections never overlap)
    if phase == "start":
        gc_t[0] = time.thread_time()  # always: the flag may turn on between a start and its stop
    elif gc_on[0]:
        gc_time[info["generation"]] += time.thread_time() - gc_t[0]
        gc_count[info["generation"]] += 1

gc.callbacks.append(on_gc)

def sample():
    me = threading.get_ident()
    counts = collections.Counter()
    n = 0
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)  # the sampler gets the GIL soon after it asks: samples land near their time
    t0 = time.perf_counter()
    while os.path.exists(out + ".on"):
        time.sleep(1 / rate)
        n += 1
        for tid, frame in sys._current_frames().items():
            if tid == me:
                continue
            code = frame.f_code
            if (os.path.basename(code.co_filename), code.co_name) in IDLE:
                continue
            stack = []
            while frame is not None and len(stack) < 80:
                stack.append(frame.f_code)
                frame = frame.f_back
            counts[(tid, tuple(stack))] += 1
    elapsed = time.perf_counter() - t0
    sys.setswitchinterval(switch)
    names = {t.ident: t.name for t in threading.enumerate()}
    with open(out, "w") as fh:
        json.dump({"ticks": n, "elapsed": elapsed,
                   "stacks": [[names.get(t, str(t)), [c.co_filename + ":" + c.co_name for c in s], k]
                              for (t, s), k in counts.items()]}, fh)

def thread_cpu():  # seconds of user + system time of each live thread, by name (from /proc)
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[t.name] = (int(fields[11]) + int(fields[12])) / tick
    return out

def control():
    cpu0 = {}
    while True:
        time.sleep(0.05)
        if os.path.exists(out + ".on"):
            sample()
        elif os.path.exists(out + ".gc") and not gc_on[0]:
            gc_time[:], gc_count[:] = [0.0, 0.0, 0.0], [0, 0, 0]
            cpu0 = thread_cpu()
            gc_on[0] = True
        elif gc_on[0] and not os.path.exists(out + ".gc"):
            gc_on[0] = False
            with open(out + ".gc.json", "w") as fh:
                cpu1 = thread_cpu()
                json.dump({"gc_s": gc_time, "gc_n": gc_count,
                           "threads": {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}}, fh)

threading.Thread(target=control, name="bench-sampler", daemon=True).start()
runpy.run_module("turnout", run_name="__main__", alter_sys=True)
'''


def classify(stack: list[str]) -> str:
    for frame in stack:  # innermost first
        path, _, fn = frame.rpartition(":")
        for where, fns, name in STEPS:
            if where in path and (fns is None or fn in fns):
                return name
    return "other (event loop, asyncio)"


def library(stack: list[str]) -> str:
    path = stack[0].rpartition(":")[0]
    parts = Path(path).parts
    for lib in LIBS:
        if lib in parts or f"{lib}.py" in parts:
            return lib
    return Path(path).name


def start_gateway(root: Path, upstream: str, tmp: Path, tag: str, sampled: Path | None,
                  rate: float) -> tuple[Proc, str]:
    cfg = {
        "engines": {"up": {"dialect": "openai", "locality": "remote", "base_url": upstream + "/v1",
                           "model": "fake-echo", "pricing": {"input_per_m": 1.0, "output_per_m": 2.0},
                           "resilience": {"max_concurrency": 256, "max_queue": 1024}}},
        "routes": {"auto": {"chain": ["up"]}, "other": {"chain": ["up"]}},
        "rules": [{"name": "tagged", "when": {"metadata": {"tier": "gold"}}, "route": "other"}],
        "storage": {"sqlite_path": str(tmp / f"{tag}.sqlite")},
        "guards": {"enabled": False},
    }
    config = tmp / f"{tag}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(root)}
    made = subprocess.run([sys.executable, "-m", "turnout", "keys", "--db", str(tmp / f"{tag}.sqlite"), "create",
                           "--tenant", "bench", "--rpm", "100000000", "--json"],
                          capture_output=True, text=True, check=True, env=env, cwd=root)
    key = json.loads(made.stdout)["key"]
    boot = tmp / "bootstrap.py"
    boot.write_text(BOOTSTRAP)
    out = str(sampled) if sampled is not None else str(tmp / "unused")
    return _start_script(boot, root, out, rate, config), key


def _start_script(boot: Path, root: Path, out: str, rate: float, config: Path) -> Proc:
    """``start_server`` runs ``python -m MODULE``: a script is run through a one-line module shim."""
    shim = boot.parent / "request_cpu_boot.py"
    shim.write_text(f"import runpy, sys\nsys.argv = [{str(boot)!r}, *sys.argv[1:]]\n"
                    f"runpy.run_path({str(boot)!r}, run_name='__main__')\n")
    return start_server("request_cpu_boot", str(root), out, str(rate), "serve", "--config", str(config),
                        "--log-level", "warning", timeout=90,
                        env={"PYTHONPATH": os.pathsep.join([str(boot.parent), str(root)])}, cwd=str(root))


def _wait_json(path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.1)  # written at once, but let the writer close it
    return dict(json.loads(path.read_text()))


def measure(proc: Proc, key: str, c: int, duration: float) -> dict[str, float]:
    url, headers = proc.url + "/v1/chat/completions", {"Authorization": f"Bearer {key}"}
    cpu = cpu_seconds(proc.pid)
    r = wrk(url, c, duration, BODY, headers)
    served = r["rps"] * max(1, round(duration))
    r["cpu_us"] = (cpu_seconds(proc.pid) - cpu) / served * 1e6
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rate", type=float, default=500, help="samples per second of the sampled run")
    ap.add_argument("--root", type=Path, action="append", default=[],
                    help="another checkout to run side by side (repeatable); this checkout always runs")
    ap.add_argument("--rounds", type=int, default=1, help="plain runs per checkout, alternated; the median counts")
    args = ap.parse_args()
    roots = [ROOT, *(r.resolve() for r in args.root)]
    names = ["this" if r == ROOT else r.name for r in roots]
    tmp = Path(tempfile.mkdtemp(prefix="turnout-request-cpu-"))
    procs: list[Proc] = []
    plain: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    samples: dict[str, tuple[dict[str, collections.Counter[str]], dict[str, collections.Counter[str]], int, float]] = {}
    try:
        up = start_server("turnout.testing.upstream", "--model", "fake-echo")
        procs.append(up)
        gws = {}
        for name, root in zip(names, roots, strict=True):
            sampled = tmp / f"{name}.samples.json"
            gw, key = start_gateway(root, up.url, tmp, name, sampled, args.rate)
            procs.append(gw)
            gws[name] = (gw, key, sampled)
            wrk(gw.url + "/v1/chat/completions", args.concurrency, 2, BODY, {"Authorization": f"Bearer {key}"})
        for _ in range(args.rounds):
            for name, (gw, key, sampled) in gws.items():
                flag = Path(str(sampled) + ".gc")
                flag.touch()
                r = measure(gw, key, args.concurrency, args.duration)
                flag.unlink()
                stats = _wait_json(Path(str(sampled) + ".gc.json"))
                Path(str(sampled) + ".gc.json").unlink()
                served = r["rps"] * max(1, round(args.duration))
                r["gc_us"] = [t / served * 1e6 for t in stats["gc_s"]]  # type: ignore[assignment]
                r["gc_n"] = stats["gc_n"]
                r["threads"] = {k: v / served * 1e6 for k, v in stats["threads"].items()}  # type: ignore[assignment]
                plain[name].append(r)
                print(f"  plain   {name:<10} {r['rps']:>7.0f} req/s  CPU {r['cpu_us']:>6.0f} us/req  "
                      f"p50 {r['p50']:.2f} ms  errors {r['errors']:.0f}", file=sys.stderr)
        for name, (gw, key, sampled) in gws.items():
            on = Path(str(sampled) + ".on")
            on.touch()
            r = measure(gw, key, args.concurrency, args.duration)
            on.unlink()
            data = _wait_json(sampled)
            steps: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
            libs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
            for thread, stack, count in data["stacks"]:
                if thread == "MainThread" and stack[0].endswith(LOOP_IN_C):
                    continue  # uvloop's C code or idle: not told apart
                steps[thread][classify(stack)] += count
                libs[thread][library(stack)] += count
            samples[name] = (steps, libs, data["ticks"], r["cpu_us"])
            busy = sum(sum(c.values()) for c in steps.values())
            print(f"  sampled {name:<10} {r['rps']:>7.0f} req/s  CPU {r['cpu_us']:>6.0f} us/req  "
                  f"{busy} busy thread samples in {data['ticks']} ticks", file=sys.stderr)
    finally:
        for p in procs:
            p.stop()
    cpu = {n: sorted(r["cpu_us"] for r in plain[n])[len(plain[n]) // 2] for n in names}
    rps = {n: sorted(r["rps"] for r in plain[n])[len(plain[n]) // 2] for n in names}
    print(f"\nc={args.concurrency}, {args.duration:.0f} s per run, {args.rounds} plain run(s) per checkout (median); "
          f"load average {os.getloadavg()[0]:.1f}")
    print("checkouts: " + ", ".join(f"{n} = {r}" for n, r in zip(names, roots, strict=True)))
    mid = {n: sorted(plain[n], key=lambda r: r["cpu_us"])[len(plain[n]) // 2] for n in names}
    for title, which in (("step", 0), ("library (innermost frame)", 1)):
        table: dict[str, collections.Counter[str]] = {}
        for n in names:  # each thread's measured CPU, shared out by its samples
            rows: collections.Counter[str] = collections.Counter()
            threads: dict[str, float] = mid[n]["threads"]  # type: ignore[assignment]
            for thread, counter in samples[n][which].items():
                seen = sum(counter.values())
                for k, v in counter.items():
                    rows[k] += v / seen * threads.get(thread, 0.0)
            for thread, us in threads.items():
                if thread not in samples[n][which] and thread != "bench-sampler" and us >= 1:
                    rows[f"thread {thread} (not sampled)"] += us
            rows[REST] = cpu[n] - sum(rows.values())
            table[n] = rows
        keys = sorted({k for n in names for k in table[n]}, key=lambda k: -max(table[n][k] for n in names))
        head = "".join(f"{n + ' us':>12}{'share':>7}" for n in names)
        print(f"\n{'CPU per request, by ' + title:<58}{head}")
        for k in keys:
            print(f"{k:<58}" + "".join(f"{table[n][k]:>12.0f}{table[n][k] / cpu[n]:>7.1%}" for n in names))
        print(f"{'total (measured, plain run)':<58}" + "".join(f"{cpu[n]:>12.0f}{'':>7}" for n in names))
    print(f"\n{'CPU per request, by thread (measured, /proc)':<58}")
    for t in sorted({t for n in names for t, us in mid[n]["threads"].items() if us >= 1}):  # type: ignore[attr-defined]
        print(f"{t:<58}" + "".join(f"{mid[n]['threads'].get(t, 0.0):>12.0f}{'':>7}" for n in names))  # type: ignore[attr-defined]
    print(f"\n{'req/s (plain run)':<58}" + "".join(f"{rps[n]:>12.0f}{'':>7}" for n in names))
    print(f"{'CPU us/req with the sampler on':<58}" + "".join(f"{samples[n][3]:>12.0f}{'':>7}" for n in names))
    print(f"{'of which garbage collection, gen 0/1/2 (us/req)':<58}"
          + "".join(f"{'/'.join(f'{t:.0f}' for t in mid[n]['gc_us']):>19}" for n in names))
    print(f"{'collections during the run, gen 0/1/2':<58}"
          + "".join(f"{'/'.join(str(c) for c in mid[n]['gc_n']):>19}" for n in names))
    if len(names) > 1:
        base = names[-1]
        for n in names[:-1]:
            print(f"{n} / {base}: CPU per request {cpu[n] / cpu[base]:.2f}x, req/s {rps[n] / rps[base]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
