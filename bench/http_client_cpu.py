"""CPU per request of the HTTP client the gateway uses towards OpenAI-wire engines (aiohttp), against
a Rust-backed one (pyreqwest), posting the same chat body to the zero-latency stand-in upstream
(turnout.testing.upstream) from one asyncio (uvloop) process, ``--concurrency`` requests in flight.

    PYTHON_WITH_BOTH bench/http_client_cpu.py [--duration 5] [--concurrency 50] [--rounds 2]

Run it with an interpreter that has aiohttp, uvloop, orjson and pyreqwest (pyreqwest is not a
turnout dependency: e.g. ``python -m venv /tmp/tools && /tmp/tools/bin/pip install aiohttp uvloop
orjson pyreqwest``); the upstream runs with ``--upstream-python`` (default: the interpreter
found on PATH as ``python``, which must have turnout installed). CPU is this process's user +
system time, all its threads (pyreqwest's Rust runtime threads included), per request; the
clients alternate ``--rounds`` times and the median counts. Each request's body is parsed as
the gateway does (orjson), so both sides do the same work around the client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import orjson
import uvloop

BODY = orjson.dumps({"model": "fake-echo", "messages": [{"role": "user", "content": "hello from the bench"}],
                     "max_tokens": 16, "stream": False})
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer x"}


async def aiohttp_client(url: str, limit: int) -> tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                    timeout=aiohttp.ClientTimeout(total=None, connect=5))

    async def one() -> int:
        async with session.post(url, data=BODY, headers=HEADERS) as resp:
            raw = await resp.read()
        return len(orjson.loads(raw)["choices"])

    return one, session.close


async def pyreqwest_client(url: str, limit: int) -> tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[None]]]:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(limit).build()

    async def one() -> int:
        resp = await client.post(url).headers(HEADERS).body_bytes(BODY).build().send()
        raw = await resp.bytes()
        return len(orjson.loads(bytes(raw))["choices"])

    async def close() -> None:
        await client.close()

    return one, close


async def run(make: Callable[..., Awaitable[tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[None]]]]],
              url: str, concurrency: int, duration: float) -> tuple[float, float]:
    one, close = await make(url, concurrency)
    for _ in range(concurrency):  # warm: the connections open
        await one()
    done = 0
    stop = time.monotonic() + duration

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < stop:
            assert await one() == 1
            done += 1

    cpu, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - t0
    await close()
    return cpu / done * 1e6, done / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--upstream-python", default="python")
    args = ap.parse_args()
    up = subprocess.Popen([args.upstream_python, "-m", "turnout.testing.upstream", "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if (m := re.search(r"listening on (http://\S+)", line)) is not None:
                break
        else:
            raise SystemExit("the upstream did not start")
        url = m.group(1) + "/v1/chat/completions"
        clients = {"aiohttp": aiohttp_client, "pyreqwest": pyreqwest_client}
        results: dict[str, list[tuple[float, float]]] = {n: [] for n in clients}
        for _ in range(args.rounds):
            for name, make in clients.items():
                r = uvloop.run(run(make, url, args.concurrency, args.duration))
                results[name].append(r)
                print(f"  {name:<10} {r[0]:>6.0f} us CPU/request  {r[1]:>6.0f} req/s", file=sys.stderr)
    finally:
        up.terminate()
        up.wait(10)
    print(f"\nc={args.concurrency}, {args.duration:.0f} s x {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'client':<12}{'CPU us/req':>12}{'req/s':>9}")
    med = {n: sorted(rs)[len(rs) // 2] for n, rs in results.items()}
    for name, (cpu, rps) in med.items():
        print(f"{name:<12}{cpu:>12.0f}{rps:>9.0f}")
    print(f"pyreqwest / aiohttp: CPU per request {med['pyreqwest'][0] / med['aiohttp'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
