"""What capture adds to the record step (issue 26), in-process, so the figure is the store's and the
threads' work, not the HTTP stack's noise: a request's ledger row committed by the SQLite ledger's
group-commit writer, then (capture on) its capture queued for the capture writer thread
(``turnout.ledger.capture_writer``), as ``turnout.recorder`` does.

    python bench/capture_cost.py [--n 400] [--rounds 3] [--chars 200]

Modes: no capture; capture of a request the guards did not inspect (guards off: the whole scrub on
the prompt and the answer); capture of one they did (the answer's pattern-PII scrub only). Per
round, alternating: ``n`` requests one at a time (each awaits its ledger commit, as a request does at
concurrency 1), then ``n`` requests 32 at a time. Each capture carries a prompt of ``--chars``
characters and an answer of the same size. Printed per mode: p50 / p99 of a request's record step
at concurrency 1 (what the client waits for), requests/s at 32, and how long the capture writer then
took to write what was queued; and the cost of ``Pending.row`` (the text work) alone. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turnout.capture import Pending  # noqa: E402
from turnout.ledger.base import LedgerRow  # noqa: E402
from turnout.ledger.capture import CapturedAnswer  # noqa: E402
from turnout.ledger.sqlite import SQLiteLedger  # noqa: E402

MODES = {"no capture": None, "capture, guards off": False, "capture, guards on": True}


def _row(i: int, text: str, inspected: bool | None) -> tuple[LedgerRow, Pending | None]:
    ts = time.time()
    rid = f"r{i}-{time.monotonic_ns()}"
    pending = Pending(request_id=rid, tenant="bench", ts=ts, expires_ts=ts + 86400, route="auto", scope="remote",
                      raw=[("user", text)], shown=[("user", text)],
                      answers=[CapturedAnswer("up", "remote", "answer", "echo: " + text)], engine="up",
                      locality="remote", inspected=inspected) if inspected is not None else None
    return LedgerRow(ts=ts, request_id=rid, tenant="bench", alias="auto", status="ok", http_status=200, engine="up",
                     locality="remote", prompt_tokens=12, completion_tokens=8), pending


async def _record(ledger: SQLiteLedger, row: LedgerRow, pending: Pending | None) -> None:
    await ledger.record(row)
    if pending is not None:
        ledger.keep(pending)


async def _sequential(ledger: SQLiteLedger, n: int, text: str, capture: bool | None) -> list[float]:
    out = []
    for i in range(n):
        row, pending = _row(i, text, capture)
        t0 = time.perf_counter()
        await _record(ledger, row, pending)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _concurrent(ledger: SQLiteLedger, n: int, text: str, capture: bool | None) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, 32):
        await asyncio.gather(*(_record(ledger, *_row(i, text, capture)) for i in range(start, min(n, start + 32))))
    return n / (time.perf_counter() - t0)


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


async def main_async(args: argparse.Namespace) -> None:
    text = ("hello from the bench, a request of ordinary words " * 100)[:args.chars]
    tmp = Path(tempfile.mkdtemp(prefix="turnout-capture-bench-"))
    seq: dict[str, list[float]] = {m: [] for m in MODES}
    rps: dict[str, list[float]] = {m: [] for m in MODES}
    drain: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode, inspected in MODES.items():
            ledger = SQLiteLedger(tmp / f"bench-{r}-{len(seq[mode])}.sqlite")  # a fresh capture writer each time
            try:
                await _sequential(ledger, 20, text, True)  # warm-up: the scrub's detector, the writer thread
                seq[mode] += await _sequential(ledger, args.n, text, inspected)
                rps[mode].append(await _concurrent(ledger, args.n, text, inspected))
            finally:
                t0 = time.perf_counter()
                await ledger.close()  # waits for the capture writer to write what is queued
                drain[mode].append(time.perf_counter() - t0)
    row_ms = {}
    for inspected in (False, True):
        p = Pending(request_id="x", tenant="t", ts=0, expires_ts=1, route="auto", scope="remote",
                    raw=[("user", text)], shown=[("user", text)],
                    answers=[CapturedAnswer("up", "remote", "answer", "echo: " + text)], inspected=inspected)
        t0 = time.perf_counter()
        for _ in range(200):
            p.row()
        row_ms[inspected] = (time.perf_counter() - t0) / 200 * 1000
    print(f"{args.rounds} rounds x {args.n} rows, prompt and answer {args.chars} chars each")
    print(f"{'mode':<22}{'c=1 p50 ms':>12}{'c=1 p99 ms':>12}{'c=32 req/s':>12}{'then drained in s':>19}")
    for mode in MODES:
        print(f"{mode:<22}{_pct(seq[mode], 0.5):>12.2f}{_pct(seq[mode], 0.99):>12.2f}"
              f"{statistics.median(rps[mode]):>12.0f}{statistics.median(drain[mode]):>19.2f}")
    print(f"Pending.row() alone (conceal, scrub, JSON; writer thread): guards off {row_ms[False]:.2f} ms, "
          f"guards on {row_ms[True]:.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chars", type=int, default=200)
    asyncio.run(main_async(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
