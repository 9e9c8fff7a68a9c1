"""Provider faults against a real gateway, with the previous defaults and today's side by side.

    python bench/rescue_scenarios.py [--scale 0.1] [--words 60] [--only NAME] [--hedge S] [--no-recovery]

Real processes on loopback: two gateways (one configured with the previous defaults, one with
today's), a fault-injecting OpenAI-wire upstream as the primary engine and a second, healthy
one as the fallback (same deterministic answer, ``continuation: restart``; the route is
``[primary, backup]``). Every time (timeouts, backoff, the breaker's waits, the faults'
stalls) is multiplied by ``--scale``: 0.1 runs in about two minutes and reads as tenths of the
real seconds; ``--scale 1`` plays real time (the issue's 20 s first token, 30 s timeouts).

Previous defaults: first-token and idle timeouts 30 s whatever the chain; circuit probed after
30 s and, when the probe failed, 30 s again. Today's (``turnout.config.Resilience``): with a
later engine in the chain 10 s to the first token (3 x the engine's recent p95 if longer, at
most 30 s) and 10 s between chunks; alone, 30 s; the circuit probed 0.25 s after it opens,
each failed probe doubling the wait up to 1 s. Retries (1), the whole-answer timeout (60 s) and
the rest are the defaults in both. Each scenario is played as a stream and as a JSON request,
with the circuit kept closed (the breaker is measured apart: ``recovery``).

Per scenario, kind and configuration it prints:
  outcome   complete (the whole answer: exact text, a finish reason, ``[DONE]`` for streams; "rescued"
            when the fallback took part), clean error (an error status, or a stream ending with an
            error event and neither a finish nor ``[DONE]``), or FAILURE (anything else)
  seconds   wall time until the response was complete
  attempts  requests each engine received (today's defaults)
Then ``recovery``: an outage (503 on every request) of 50 s x scale with a request every
0.5 s x scale, then the primary healthy again: requests the primary got during the outage (the probes), and
seconds from its recovery to the first answer it gave. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from turnout.config import Resilience
from turnout.testing.procs import Proc, start_server

# (name, scenario for the primary; "N/M" of the answer's chunks, "Ns": N seconds x scale)
SCENARIOS: list[tuple[str, Any]] = [
    ("healthy", "ok"),
    ("cut after 2/3 of the tokens (TCP RST)", {"name": "reset_midstream", "after_chunks": "2/3"}),
    ("stall after 1/3 of the tokens", {"name": "stall_midstream", "after_chunks": "1/3", "seconds": "120s"}),
    ("malformed tenth chunk", {"name": "malformed_sse", "after_chunks": 10}),
    ("error event mid-stream", {"name": "error_midstream", "after_chunks": 10}),
    ("no finish, clean close", "no_done"),
    ("finish + usage, no [DONE]", "no_done_marker"),
    ("context_length_exceeded", "context_length_exceeded"),
    ("content_policy_violation", "content_policy"),
    ("silent provider (no headers)", {"name": "stall_headers", "seconds": "120s"}),
    ("first token after 20 s", {"name": "stall_first_token", "seconds": "20s"}),
    ("first token after 12 s", {"name": "stall_first_token", "seconds": "12s"}),
    ("first token after 5 s", {"name": "stall_first_token", "seconds": "5s"}),
    ("503 on every attempt", "503"),
    ("429, Retry-After over the cap", {"name": "429", "retry_after": 30}),
]

#: The settings that are times (scaled), and what the previous defaults had for those that changed.
TIMES = ("timeout", "connect_timeout", "first_token_timeout", "idle_timeout", "fallback_first_token_timeout",
         "fallback_idle_timeout", "backoff", "max_retry_after", "breaker_probe", "breaker_cooldown")
PREVIOUS = {"fallback_first_token_timeout": 30.0, "fallback_idle_timeout": 30.0, "breaker_probe": 30.0,
            "breaker_cooldown": 30.0}
OUTAGE_S = 50.0  # x scale
GAP_S = 0.5  # x scale: between two requests of the outage


def resilience(previous: bool, scale: float) -> dict[str, Any]:
    res = Resilience().model_dump()
    if previous:
        res.update(PREVIOUS)
    return {k: v * scale if k in TIMES else v for k, v in res.items()}


def resolve(spec: Any, words: int, scale: float) -> Any:
    """Fill in fractions of the answer (``"2/3"`` of the chunks) and scaled seconds (``"20s"``)."""
    if not isinstance(spec, dict):
        return spec
    out = dict(spec)
    for key, value in spec.items():
        if isinstance(value, str) and "/" in value:
            a, b = value.split("/")
            out[key] = 1 + words * int(a) // int(b)  # the role chunk, then the words
        elif key != "name" and isinstance(value, str) and value.endswith("s"):
            out[key] = float(value[:-1]) * scale
    return out


def config(primary: str, backup: str, res: dict[str, Any], hedge: float | None) -> dict[str, Any]:
    def engine(url: str, model: str, **kw: Any) -> dict[str, Any]:
        return {"dialect": "openai", "locality": "remote", "base_url": url + "/v1", "model": model, **kw}

    closed = {**res, "breaker_failures": 1000}  # the scenarios' own engines: the circuit stays closed
    return {
        "engines": {
            "primary": engine(primary, "fake-primary", context_window=128000, resilience=closed,
                              pricing={"input_per_m": 2.5, "output_per_m": 10.0}),
            "backup": engine(backup, "fake-backup", context_window=1000000, continuation="restart", resilience=closed,
                             pricing={"input_per_m": 1.0, "output_per_m": 4.0}),
            "guarded": engine(primary, "fake-primary", resilience=res),  # the default breaker
        },
        "routes": {"chat": {"chain": ["primary", "backup"], **({"hedge": {"after": hedge}} if hedge else {})},
                   "recovery": {"chain": ["guarded", "backup"]}},
    }


def play(gw: str, body: dict[str, Any], answer: str) -> tuple[str, float, str]:
    """(outcome, seconds, request id)."""
    t0 = time.perf_counter()
    if not body.get("stream"):
        r = httpx.post(gw + "/v1/chat/completions", json=body, timeout=120)
        took = time.perf_counter() - t0
        if r.status_code != 200:
            ok = "error" in r.json()
            return ("clean error " + str(r.status_code)) if ok else "FAILURE", took, r.headers["x-request-id"]
        choice = r.json()["choices"][0]
        whole = choice["message"]["content"] == answer and choice["finish_reason"]
        return ("complete" if whole else "FAILURE"), took, r.headers["x-request-id"]
    events: list[Any] = []
    with httpx.stream("POST", gw + "/v1/chat/completions", json=body, timeout=120) as r:
        rid = r.headers["x-request-id"]
        if r.status_code != 200:
            r.read()
            if "-v" in sys.argv:
                print(r.text, file=sys.stderr)
            return f"clean error {r.status_code}", time.perf_counter() - t0, rid
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    took = time.perf_counter() - t0
    chunks = [e for e in events if isinstance(e, dict) and e.get("choices")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    finishes = [c for c in chunks if c["choices"][0]["finish_reason"]]
    if events and events[-1] == "[DONE]" and len(finishes) == 1 and text == answer:
        return "complete", took, rid
    if events and isinstance(events[-1], dict) and "error" in events[-1] and not finishes and "[DONE]" not in events:
        return "clean error (event)", took, rid
    return "FAILURE", took, rid


def ledger(db: Path, rid: str) -> dict[str, Any]:
    for _ in range(200):
        conn = sqlite3.connect(db)
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM requests WHERE request_id = ?", (rid,)).fetchone()
        conn.close()
        if row is not None:
            return dict(row)
        time.sleep(0.05)
    return {}


def control(proc: Proc, path: str, body: Any = None) -> Any:
    r = httpx.request("GET" if body is None and path.endswith("requests") else "POST", proc.url + path,
                      json=body, timeout=10)
    return r.json()


def asked(u: Proc) -> int:
    return sum(1 for q in control(u, "/__control/requests") if q["path"] == "/v1/chat/completions")


def scenario(gw: Proc, db: Path, primary: Proc, backup: Proc, spec: Any, stream: bool,
             message: str, answer: str) -> tuple[str, float, str]:
    """(outcome, seconds, attempts primary / backup) of one scenario on one gateway."""
    for u in (primary, backup):
        control(u, "/__control/reset", {})
    control(primary, "/__control/scenarios", {"default": spec})
    body = {"model": "chat", "messages": [{"role": "user", "content": message}], "stream": stream}
    outcome, took, rid = play(gw.url, body, answer)
    row = ledger(db, rid)
    if outcome == "complete" and row.get("engine") != "primary":
        outcome = "rescued"  # complete, thanks to the fallback
    return outcome, took, f"{asked(primary)} / {asked(backup)}"


def recovery(gw: Proc, primary: Proc, backup: Proc, scale: float, message: str) -> tuple[int, int, float]:
    """(requests during the outage, the primary's share of them: its probes, seconds from its
    recovery to its first answer)."""
    for u in (primary, backup):
        control(u, "/__control/reset", {})
    control(primary, "/__control/scenarios", {"default": "503"})
    body = {"model": "recovery", "messages": [{"role": "user", "content": message}]}
    sent, t0 = 0, time.perf_counter()
    with httpx.Client(timeout=120) as client:
        while time.perf_counter() - t0 < OUTAGE_S * scale:
            client.post(gw.url + "/v1/chat/completions", json=body)
            sent += 1
            time.sleep(GAP_S * scale)
        probes = asked(primary)
        control(primary, "/__control/reset", {})  # recovered
        back = time.perf_counter()
        while client.post(gw.url + "/v1/chat/completions", json=body).headers.get("x-turnout-engine") != "guarded":
            if time.perf_counter() - back > 120 * scale + 10:
                return sent, probes, float("inf")  # never came back
            time.sleep(0.05)
        return sent, probes, time.perf_counter() - back


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.1, help="every time x this (1: real time)")
    p.add_argument("--words", type=int, default=60, help="tokens in the answer")
    p.add_argument("--only", default=None, help="scenarios whose name contains this")
    p.add_argument("--hedge", type=float, default=None, help="hedge streams after this many seconds (default off)")
    p.add_argument("--no-recovery", action="store_true", help="skip the outage and recovery run")
    p.add_argument("-v", action="store_true", help="print error bodies")
    args = p.parse_args()
    message = " ".join(f"w{i}" for i in range(args.words - 1))
    answer = "echo: " + message
    with tempfile.TemporaryDirectory() as tmp, \
            start_server("turnout.testing.upstream", "--model", "fake-primary") as primary, \
            start_server("turnout.testing.upstream", "--model", "fake-backup") as backup:
        gateways: dict[str, tuple[Proc, Path]] = {}
        try:
            for name in ("previous", "now"):
                cfg = config(primary.url, backup.url, resilience(name == "previous", args.scale), args.hedge)
                path = Path(tmp) / f"{name}.yaml"
                path.write_text(yaml.safe_dump(cfg))
                db = Path(tmp) / f"{name}.sqlite"
                gateways[name] = (start_server("turnout", "serve", "--config", str(path), "--db", str(db),
                                               timeout=60, cwd=tmp), db)
                for stream in (True, False):  # warm-up: connections, first-request costs (not in the table)
                    play(gateways[name][0].url, {"model": "chat", "stream": stream,
                                                 "messages": [{"role": "user", "content": message}]}, answer)
            hedge = f", hedge after {args.hedge:g} s" if args.hedge else ""
            print(f"times x {args.scale:g}, answer {args.words} tokens, route [primary, backup]{hedge}\n")
            print("| scenario | request | previous defaults | s | today's defaults | s | attempts primary / backup |")
            print("|---|---|---|---|---|---|---|")
            for name, spec in SCENARIOS:
                if args.only and args.only not in name:
                    continue
                for stream in (True, False):
                    cells = []
                    for gw, db in gateways.values():
                        outcome, took, attempts = scenario(gw, db, primary, backup,
                                                           resolve(spec, args.words, args.scale), stream,
                                                           message, answer)
                        cells.append(f"{outcome} | {took:.2f}")
                    print(f"| {name} | {'stream' if stream else 'JSON'} | {' | '.join(cells)} | {attempts} |",
                          flush=True)
            if not args.no_recovery:
                print(f"\noutage: 503 on every request for {OUTAGE_S * args.scale:g} s, a request every "
                      f"{GAP_S * args.scale * 1000:g} ms, "
                      "then healthy (route [guarded, backup], the default breaker)\n")
                print("| defaults | requests during the outage | of them to the primary (probes) "
                      "| s from recovery to the primary's first answer |")
                print("|---|---|---|---|")
                for name, (gw, _) in gateways.items():
                    sent, probes, back = recovery(gw, primary, backup, args.scale, message)
                    print(f"| {name} | {sent} | {probes} | {back:.2f} |", flush=True)
        finally:
            for gw, _ in gateways.values():
                gw.stop()


if __name__ == "__main__":
    main()
