"""Requests/s of the fake OpenAI upstream itself (the baseline for the gateway overhead bench).

    python bench/upstream_rps.py [--url http://127.0.0.1:P] [--requests 5000] [--concurrency 1 50] [--stream]

Without --url it starts ``turnout.testing.upstream`` as a subprocess on a free port.  The
client is aiohttp in one process; on a small machine the client is often the bottleneck, so
``--clients N`` runs N client processes in parallel and sums their rates.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

BODY = {"model": "fake-echo", "messages": [{"role": "user", "content": "hello from the bench"}]}


async def _run(url: str, n: int, concurrency: int, stream: bool) -> tuple[float, list[float]]:
    body = dict(BODY, stream=True) if stream else BODY
    target = f"{url}/v1/chat/completions"
    latencies: list[float] = []
    remaining = n
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        # warm-up: open the connections
        await asyncio.gather(*(_one(session, target, body) for _ in range(concurrency)))

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                await _one(session, target, body)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return elapsed, latencies


async def _one(session: aiohttp.ClientSession, url: str, body: dict) -> None:
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
        await resp.read()


async def _run_raw(url: str, n: int, concurrency: int, stream: bool) -> tuple[float, list[float]]:
    """The same load from a minimal HTTP/1.1 keep-alive client (asyncio streams, pre-built request
    bytes), so that the client costs less CPU than the server it measures."""
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = json.dumps(dict(BODY, stream=True) if stream else BODY).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    remaining = n

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:60].decode(errors="replace"))
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            i = lower.index(b"content-length: ") + 16
            await reader.readexactly(int(lower[i : lower.index(b"\r\n", i)]))

    async def worker(warm: asyncio.Event) -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, port)
        await one(reader, writer)
        await warm.wait()
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await one(reader, writer)
            latencies.append(time.perf_counter() - t0)
        writer.close()

    warm = asyncio.Event()
    tasks = [asyncio.ensure_future(worker(warm)) for _ in range(concurrency)]
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    warm.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0, latencies


def _client(args: tuple[str, int, int, bool, str]) -> tuple[float, list[float]]:
    url, n, concurrency, stream, kind = args
    run = _run_raw if kind == "raw" else _run
    return asyncio.run(run(url, n, concurrency, stream))


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc), to report the server's own cost."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--requests", type=int, default=5000, help="per client process and concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument(
        "--client",
        choices=["aiohttp", "raw"],
        default="aiohttp",
        help="aiohttp (a real client, often the bottleneck) or raw (a minimal keep-alive HTTP/1.1 client)",
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line per concurrency level")
    args = parser.parse_args()

    proc = None
    url = args.url
    if url is None:
        from turnout.testing.procs import start_server

        proc = start_server("turnout.testing.upstream")
        url = proc.url
    try:
        print(
            f"upstream {url}  client={args.client}  stream={args.stream}  clients={args.clients}  "
            f"requests/client={args.requests}"
        )
        for c in args.concurrency:
            cpu0 = _cpu_seconds(proc.pid) if proc else None
            if args.clients == 1:
                results = [_client((url, args.requests, c, args.stream, args.client))]
            else:
                with mp.get_context("spawn").Pool(args.clients) as pool:
                    results = pool.map(
                        _client, [(url, args.requests, c, args.stream, args.client)] * args.clients
                    )
            total = sum(len(lat) for _, lat in results)
            wall = max(el for el, _ in results)
            lat = sorted(x for _, l in results for x in l)
            p50 = statistics.median(lat) * 1000
            p99 = lat[int(len(lat) * 0.99) - 1] * 1000
            line = (f"concurrency {c:>3}: {total / wall:8.0f} req/s   p50 {p50:.2f} ms   p99 {p99:.2f} ms   "
                    f"({total} requests)")
            cpu1 = _cpu_seconds(proc.pid) if proc else None
            if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
                # The server is one process on one core: requests per CPU-second is its ceiling.
                line += f"   server CPU {cpu1 - cpu0:.2f} s -> {total / (cpu1 - cpu0):.0f} req per server CPU-second"
            print(line, flush=True)
            if args.json:
                import json

                server_cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
                print(
                    json.dumps(
                        {
                            "concurrency": c,
                            "requests": total,
                            "rps": total / wall,
                            "p50_ms": p50,
                            "p99_ms": p99,
                            "stream": args.stream,
                            "server_cpu_s": server_cpu,
                        }
                    )
                )
    finally:
        if proc is not None:
            proc.stop()


if __name__ == "__main__":
    main()
