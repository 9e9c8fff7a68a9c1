"""Gateway overhead: requests/s and added latency through turnout, against a zero-latency
OpenAI-compatible upstream, side by side with the upstream directly and (when installed)
LiteLLM's proxy configured the same way.

    python bench/overhead.py [--duration 10] [--concurrency 1 50] [--workers 1 2] [--guards --unique]
                             [--litellm PATH_TO_litellm]

The load comes from wrk (Debian package `wrk`): a C client, so the client costs far less
CPU than the servers it measures. turnout runs its full pipeline: API-key auth with rate
limits, rules routing (a rule is evaluated on every request), the SQLite ledger with the
audit chain, and Prometheus metrics; ``--guards`` adds the PII, secret and injection
detectors (``--pii-model``: the PII transformer, spaCy or both on every request), which cost
far more than the rest; ``--capture`` turns capture on for both routes (every request's text and
answer kept for datasets, written with its ledger row: turnout.capture). ``--workers 1 2`` runs
one turnout per count (``turnout serve --workers N``), side by side; ``--unique`` makes every
request's prompt different (with ``--guards``, what the guards cost on traffic that never repeats).
Everything shares this machine's cores, so figures are comparable within one run, not across machines.

Besides req/s and latency, each row has the CPU the server's processes (a gateway's parent and
its workers) used during the measured run, per request (``CPU us/req``, from /proc: user +
system time), and requests per CPU-second (``req/cpu-s``): on a machine shared with other work
these move far less than req/s, which depends on the cores the server got.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turnout.testing.procs import Proc, free_port, start_server

LITELLM_KEY = "sk-turnout-bench-0123456789abcdef0123456789abcdef"  # auth on for both gateways
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello from the bench"}], "max_tokens": 16}


def wrk(url: str, concurrency: int, duration: float, body: dict, headers: dict[str, str],
        unique: bool = False) -> dict[str, float]:
    """``unique``: each request's prompt ends in its own number (no two alike: nothing the gateway
    or its guards could cache)."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    hdrs = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                 f'wrk.headers["Content-Type"] = "application/json"\n{hdrs}')
    if unique:  # the body's last prompt text gets " #<n>"; wrk's own counter per connection thread
        head, tail = json.dumps(body).rsplit('"}]', 1)
        script.write(f'counter = 0\nrequest = function()\n  counter = counter + 1\n'
                     f'  return wrk.format(nil, nil, nil, {json.dumps(head)} .. " #" .. counter .. '
                     f'{json.dumps(chr(34) + "}]" + tail)})\nend\n')
    script.close()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency",
         "--timeout", "10s", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?):\s*(\d+)", out))
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE)}
    return {"rps": rps, "p50": pct["50"], "p99": pct["99"], "errors": errors}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (alive now), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return total


def start_turnout(upstream: str, tmp: Path, guards: bool, pii_model: str = "rampart",
                  capture: bool = False, workers: int = 1) -> tuple[Proc, str]:
    cfg = {
        "engines": {"up": {"dialect": "openai", "locality": "remote",
                           "base_url": upstream + "/v1", "model": "fake-echo",
                           "pricing": {"input_per_m": 1.0, "output_per_m": 2.0},
                           "resilience": {"max_concurrency": 256, "max_queue": 1024}}},
        "routes": {"auto": {"chain": ["up"]}, "other": {"chain": ["up"]}},
        "rules": [{"name": "tagged", "when": {"metadata": {"tier": "gold"}}, "route": "other"}],
        "storage": {"sqlite_path": str(tmp / f"bench-{workers}.sqlite")},
        "guards": {"enabled": guards, "pii_model": pii_model},
    }
    if capture:
        for route in cfg["routes"].values():
            route["capture"] = "on"
    config = tmp / f"turnout-{workers}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    made = subprocess.run([sys.executable, "-m", "turnout", "keys", "--db", str(tmp / f"bench-{workers}.sqlite"),
                           "create",
                           "--tenant", "bench", "--rpm", "100000000", "--json"],
                          capture_output=True, text=True, check=True)
    key = json.loads(made.stdout)["key"]
    proc = start_server("turnout", "serve", "--config", str(config), "--log-level", "warning",
                        "--workers", str(workers), timeout=90)
    return proc, key


def start_litellm(binary: str, upstream: str, tmp: Path) -> Proc:
    cfg = {"model_list": [{"model_name": "auto", "litellm_params": {"model": "openai/fake-echo",
                                                                    "api_base": upstream + "/v1", "api_key": "x"}}],
           "litellm_settings": {"telemetry": False}}
    (tmp / "litellm.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = start_server("litellm.proxy.proxy_cli", "--config", str(tmp / "litellm.yaml"), "--port", str(port),
                        "--num_workers", "1", ready_pattern="Proxy initialized",
                        python=binary, timeout=180, add_port=False, port=port,
                        env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": LITELLM_KEY})
    deadline = time.monotonic() + 120  # it logs its config before uvicorn listens: wait for the port
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.stop()
    raise RuntimeError(f"LiteLLM proxy did not listen on {port}; see {proc.log_path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--guards", action="store_true", help="also run PII/secret/injection guards on every request")
    ap.add_argument("--pii-model", choices=("rampart", "spacy", "both"), default="rampart",
                    help="the PII guard's statistical model, with --guards")
    ap.add_argument("--capture", action="store_true", help="capture every request for datasets (routes' capture: on)")
    ap.add_argument("--unique", action="store_true",
                    help="every request's prompt different (with --guards: what guards cost on real traffic)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="turnout's worker processes (turnout serve --workers N); several: one gateway each")
    ap.add_argument("--litellm", default=os.environ.get("LITELLM_PYTHON"),
                    help="a python interpreter that has litellm[proxy] installed")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("bench/overhead.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="turnout-bench-"))
    procs: list[Proc] = []
    try:
        up = start_server("turnout.testing.upstream", "--model", "fake-echo")
        procs.append(up)
        targets: dict[str, tuple[Proc, dict[str, str]]] = {"upstream direct": (up, {})}
        for n in args.workers:
            gw, key = start_turnout(up.url, tmp, args.guards, args.pii_model, args.capture, workers=n)
            procs.append(gw)
            targets["turnout" if args.workers == [1] else f"turnout {n}w"] = (gw, {"Authorization": f"Bearer {key}"})
        if args.litellm:
            lite = start_litellm(args.litellm, up.url, tmp)
            procs.append(lite)
            targets["litellm proxy"] = (lite, {"Authorization": f"Bearer {LITELLM_KEY}"})
        results: dict[tuple[str, int], dict[str, float]] = {}
        for c in args.concurrency:
            for name, (proc, headers) in targets.items():
                url = proc.url + "/v1/chat/completions"
                wrk(url, c, 2, BODY, headers, args.unique)  # warm-up
                cpu = cpu_seconds(proc.pid)
                results[(name, c)] = r = wrk(url, c, args.duration, BODY, headers, args.unique)
                served = r["rps"] * max(1, round(args.duration))
                r["cpu_us"] = (cpu_seconds(proc.pid) - cpu) / served * 1e6 if served else float("nan")
                print(f"  measured {name:<16} c={c:<3} {r['rps']:>9.0f} req/s  p50 {r['p50']:.2f} ms  "
                      f"p99 {r['p99']:.2f} ms  errors {r['errors']}  CPU {r['cpu_us']:.0f} us/req", file=sys.stderr)
        print(f"\n{'target':<18}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
              f"{'CPU us/req':>12}{'req/cpu-s':>11}{'vs direct':>11}{'vs litellm':>12}{'added p50':>11}")
        for c in args.concurrency:
            direct = results[("upstream direct", c)]
            lite = results.get(("litellm proxy", c))
            for name in targets:
                r = results[(name, c)]
                vs_l = f"{r['rps'] / lite['rps']:.1f}x" if lite else "-"
                added = f"{r['p50'] - direct['p50']:+.2f}" if name != "upstream direct" else "-"
                per_cpu = 1e6 / r["cpu_us"] if r["cpu_us"] > 0 else float("nan")
                print(f"{name:<18}{c:>5}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['errors']:>8.0f}"
                      f"{r['cpu_us']:>12.0f}{per_cpu:>11.0f}{r['rps'] / direct['rps']:>10.0%} {vs_l:>11}{added:>11}")
        if len(args.workers) > 1:
            base = f"turnout {args.workers[0]}w"
            for c in args.concurrency:
                for n in args.workers[1:]:
                    ratio = results[(f"turnout {n}w", c)]["rps"] / results[(base, c)]["rps"]
                    print(f"c={c}: {n} workers / {args.workers[0]}: {ratio:.2f}x req/s")
        for n in args.workers:
            db = str(tmp / f"bench-{n}.sqlite")
            ledger_rows = subprocess.run([sys.executable, "-m", "turnout", "usage", "--db", db, "--json"],
                                         capture_output=True, text=True, check=True)
            print(f"\nturnout ({n} worker(s)) ledger rows written during the run: "
                  f"{json.loads(ledger_rows.stdout)['total']['requests']}")
        if args.capture:
            import sqlite3

            with sqlite3.connect(tmp / f"bench-{args.workers[0]}.sqlite") as conn:
                print(f"captured requests: {conn.execute('SELECT count(*) FROM captures').fetchone()[0]}")
    finally:
        for p in procs:
            p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
