"""Soak: steady load through a real gateway process, watching errors, latency and memory.

    python bench/soak.py [--duration 180] [--segment 10] [--connections 16] [--local-concurrency 2]
                         [--only fake|local]

(a) ``fake``: the zero-latency OpenAI-wire upstream behind the gateway, driven by ``wrk``
    (``-c N``, one thread) in back-to-back segments;
(b) ``local``: the embedded llama.cpp model (max_tokens 8), driven by a closed-loop aiohttp
    client at a low concurrency.

After every segment the gateway's resident memory (VmRSS from /proc/PID/status) is sampled
against the cumulative request count. The first segment is warm-up. Printed side by side:
requests/s, errors (connect/read/timeout/non-200), p50/p99 latency, RSS at start and end,
and the RSS trend as a least-squares slope in MiB per 10k requests after warm-up. Target:
zero errors and no growth trend. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from turnout.testing.procs import Proc, start_server

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
local non200 = 0
response = function(status, headers, body) if status ~= 200 then non200 = non200 + 1 end end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "seconds": %%f, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"timeout": %%d, "status": %%d, "p50_ms": %%f, "p99_ms": %%f}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2 or max(xs) == min(xs):
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def start_gateway(tmp: Path, engines: dict[str, Any], chain: list[str]) -> Proc:
    cfg = {"engines": engines, "routes": {"auto": {"chain": chain}}}
    (tmp / "turnout.yaml").write_text(yaml.safe_dump(cfg))
    return start_server("turnout", "serve", "--config", str(tmp / "turnout.yaml"), "--db", str(tmp / "soak.sqlite"),
                        "--log-level", "warning", timeout=120, cwd=str(tmp))


def wrk_segment(url: str, seconds: int, connections: int, script: Path) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                          url + "/v1/chat/completions"], capture_output=True, text=True, timeout=seconds + 60)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith('{"requests"'))
    return json.loads(line)


async def aiohttp_segment(url: str, seconds: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    errors = {"connect": 0, "read": 0, "timeout": 0, "status": 0}
    end = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/v1/chat/completions", json={**BODY}) as r:
                    await r.read()
                    if r.status != 200:
                        errors["status"] += 1
                        continue
            except TimeoutError:
                errors["timeout"] += 1
                continue
            except aiohttp.ClientConnectorError:
                errors["connect"] += 1
                continue
            except aiohttp.ClientError:
                errors["read"] += 1
                continue
            lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [0.0] * 99
    return {"requests": len(lat) + sum(errors.values()), "seconds": time.monotonic() - t0, **errors, "write": 0,
            "p50_ms": q[49], "p99_ms": q[98]}


def soak(name: str, proc: Proc, duration: int, segment: int, run_segment: Any) -> dict[str, Any]:
    pid = proc.pid
    points: list[tuple[float, float]] = [(0.0, rss_mib(pid))]
    total = 0
    segs: list[dict[str, Any]] = []
    rounds = max(2, duration // segment)
    for i in range(rounds):
        seg = run_segment(segment)
        total += seg["requests"]
        segs.append(seg)
        points.append((float(total), rss_mib(pid)))
        print(f"  {name} {i + 1}/{rounds}: {seg['requests'] / seg['seconds']:8.1f} req/s  p50 {seg['p50_ms']:7.2f} ms"
              f"  p99 {seg['p99_ms']:7.2f} ms  RSS {points[-1][1]:7.1f} MiB", flush=True)
    warm = points[1:]  # after the first (warm-up) segment
    xs, ys = [p[0] for p in warm], [p[1] for p in warm]
    errors = sum(s[k] for s in segs for k in ("connect", "read", "write", "timeout", "status"))
    secs = sum(s["seconds"] for s in segs)
    return {
        "requests": total, "rps": total / secs, "errors": errors,
        "p50_ms": statistics.median(s["p50_ms"] for s in segs[1:] or segs),
        "p99_ms": max(s["p99_ms"] for s in segs[1:] or segs),
        "rss_start": points[0][1], "rss_warm": warm[0][1], "rss_end": points[-1][1],
        "growth_per_10k": (ys[-1] - ys[0]) / max(1.0, xs[-1] - xs[0]) * 10_000,
        "slope_per_10k": slope(xs, ys) * 10_000,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=180, help="seconds of load per target (default 180)")
    p.add_argument("--segment", type=int, default=10, help="seconds between memory samples (default 10)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections against the fake upstream")
    p.add_argument("--local-concurrency", type=int, default=2, help="concurrent clients against the embedded model")
    p.add_argument("--only", choices=["fake", "local"])
    args = p.parse_args()
    if args.only != "local" and shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only in (None, "fake"):
            with start_server("turnout.testing.upstream", "--model", "fake-frontier") as up:
                engines = {"frontier": {"dialect": "openai", "locality": "remote", "base_url": up.url + "/v1",
                                        "model": "fake-frontier", "pricing": {"input_per_m": 2.5, "output_per_m": 10}}}
                (tmp / "fake").mkdir()
                gw = start_gateway(tmp / "fake", engines, ["frontier"])
                try:
                    script = tmp / "soak.lua"
                    script.write_text(LUA % json.dumps(BODY))
                    print(f"fake upstream, wrk -c{args.connections}, {args.duration} s:", flush=True)
                    results["fake upstream"] = soak("fake", gw, args.duration, args.segment,
                                                    lambda s: wrk_segment(gw.url, s, args.connections, script))
                finally:
                    gw.stop()
        if args.only in (None, "local"):
            (tmp / "local").mkdir()
            gw = start_gateway(tmp / "local", {"local": {"dialect": "llamacpp", "n_ctx": 512}}, ["local"])
            try:
                print(f"embedded model, {args.local_concurrency} clients, {args.duration} s:", flush=True)
                results["embedded model"] = soak(
                    "local", gw, args.duration, args.segment,
                    lambda s: asyncio.run(aiohttp_segment(gw.url, s, args.local_concurrency)))
            finally:
                gw.stop()
    names = list(results)
    rows = [("requests", "{:.0f}"), ("rps", "{:.1f}"), ("errors", "{:.0f}"), ("p50_ms", "{:.2f}"),
            ("p99_ms", "{:.2f}"), ("rss_start", "{:.1f}"), ("rss_warm", "{:.1f}"), ("rss_end", "{:.1f}"),
            ("growth_per_10k", "{:+.2f}"), ("slope_per_10k", "{:+.2f}")]
    labels = {"rps": "requests/s", "p50_ms": "p50 ms", "p99_ms": "p99 ms", "rss_start": "RSS start MiB",
              "rss_warm": "RSS after warm-up MiB", "rss_end": "RSS end MiB",
              "growth_per_10k": "RSS growth MiB/10k req", "slope_per_10k": "RSS slope MiB/10k req"}
    print()
    print(f"{'':26}" + "".join(f"{n:>18}" for n in names))
    for key, fmt in rows:
        print(f"{labels.get(key, key):26}" + "".join(f"{fmt.format(results[n][key]):>18}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
