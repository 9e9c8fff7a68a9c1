"""Provider faults against a real gateway: rescued, clean error, or failure, per scenario.

    python bench/rescue_scenarios.py [--timeout 1.0] [--retries 2] [--words 60] [--only NAME] [--hedge S]

Three real processes on loopback: the gateway, a fault-injecting OpenAI-wire upstream as the
primary engine, and a second, healthy one as the fallback (same deterministic answer,
``continuation: restart``; the route is ``[primary, backup]``). The issue's measurements used
30 s timeouts and two retries; here the timeouts are ``--timeout`` seconds (compressed) so a
run takes about a minute. Each scenario is played as a stream and as a JSON request. With
``--hedge S`` the route hedges streams whose first token is later than S seconds.

Per scenario and kind it prints:
  outcome   complete (the whole answer: exact text, a finish reason, ``[DONE]`` for streams; "rescued"
            when the fallback took part),
            clean error (an error status, or a stream ending with an error event and neither a
            finish nor ``[DONE]``), or FAILURE (anything else, e.g. a truncated answer as success)
  seconds   wall time until the response was complete (first token s: the ledger's, streams)
  attempts  requests each engine received
  how       the ledger's engine and, for a rescued stream, the splice (engine, error, chars, way)
Timings are printed, never asserted.
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
from turnout.testing.procs import Proc, start_server

# (name, scenario for the primary; {words} is the answer's length in tokens)
SCENARIOS: list[tuple[str, Any]] = [
    ("healthy", "ok"),
    ("cut after 2/3 of the tokens (TCP RST)", {"name": "reset_midstream", "after_chunks": "2/3"}),
    ("stall after 1/3 of the tokens", {"name": "stall_midstream", "after_chunks": "1/3", "seconds": "4t"}),
    ("malformed tenth chunk", {"name": "malformed_sse", "after_chunks": 10}),
    ("error event mid-stream", {"name": "error_midstream", "after_chunks": 10}),
    ("no finish, clean close", "no_done"),
    ("finish + usage, no [DONE]", "no_done_marker"),
    ("context_length_exceeded", "context_length_exceeded"),
    ("content_policy_violation", "content_policy"),
    ("silent provider (no headers)", {"name": "stall_headers", "seconds": "4t"}),
    ("first token late (< first-token timeout)", {"name": "stall_first_token", "seconds": "0.6t"}),
    ("first token late, backup slower", {"name": "stall_first_token", "seconds": "0.6t"}),
    ("503 on every attempt", "503"),
    ("429, Retry-After over the cap", {"name": "429", "retry_after": 30}),
]


def resolve(spec: Any, words: int, timeout: float) -> Any:
    """Fill in fractions of the answer (``"2/3"`` of the chunks) and of the timeout (``"4t"``)."""
    if not isinstance(spec, dict):
        return spec
    out = dict(spec)
    for key, value in spec.items():
        if isinstance(value, str) and "/" in value:
            a, b = value.split("/")
            out[key] = 1 + words * int(a) // int(b)  # the role chunk, then the words
        elif isinstance(value, str) and value.endswith("t"):
            out[key] = float(value[:-1]) * timeout
    return out


def config(primary: str, backup: str, timeout: float, retries: int, hedge: float | None) -> dict[str, Any]:
    res = {"timeout": timeout * 2, "connect_timeout": timeout, "first_token_timeout": timeout,
           "idle_timeout": timeout, "retries": retries, "backoff": 0.05, "max_retry_after": timeout,
           "breaker_failures": 1000}
    return {
        "engines": {
            "primary": {"dialect": "openai", "locality": "remote", "base_url": primary + "/v1", "model": "fake-primary",
                        "context_window": 128000, "resilience": res,
                        "pricing": {"input_per_m": 2.5, "output_per_m": 10.0}},
            "backup": {"dialect": "openai", "locality": "remote", "base_url": backup + "/v1", "model": "fake-backup",
                       "context_window": 1000000, "continuation": "restart", "resilience": res,
                       "pricing": {"input_per_m": 1.0, "output_per_m": 4.0}},
        },
        "routes": {"chat": {"chain": ["primary", "backup"], **({"hedge": {"after": hedge}} if hedge else {})}},
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=1.0, help="first-token and idle timeout, seconds (issue: 30)")
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--words", type=int, default=60, help="tokens in the answer")
    p.add_argument("--only", default=None, help="scenarios whose name contains this")
    p.add_argument("--hedge", type=float, default=None, help="hedge streams after this many seconds (default off)")
    p.add_argument("-v", action="store_true", help="print error bodies")
    args = p.parse_args()
    message = " ".join(f"w{i}" for i in range(args.words - 1))
    answer = "echo: " + message
    with tempfile.TemporaryDirectory() as tmp, \
            start_server("turnout.testing.upstream", "--model", "fake-primary") as primary, \
            start_server("turnout.testing.upstream", "--model", "fake-backup") as backup:
        cfg_path = Path(tmp) / "turnout.yaml"
        cfg_path.write_text(yaml.safe_dump(config(primary.url, backup.url, args.timeout, args.retries, args.hedge)))
        db = Path(tmp) / "ledger.sqlite"
        gw = start_server("turnout", "serve", "--config", str(cfg_path), "--db", str(db), timeout=60, cwd=tmp)
        try:
            for stream in (True, False):  # warm-up: connections, first-request costs (not in the table)
                play(gw.url, {"model": "chat", "messages": [{"role": "user", "content": message}], "stream": stream},
                     answer)
            hedge = f", hedge after {args.hedge:g} s" if args.hedge else ""
            print(f"timeouts {args.timeout:g} s, retries {args.retries}, answer {args.words} tokens, "
                  f"route [primary, backup]{hedge}\n")
            print("| scenario | request | outcome | seconds | first token s | attempts primary / backup "
                  "| ledger engine | splice |")
            print("|---|---|---|---|---|---|---|---|")
            for name, spec in SCENARIOS:
                if args.only and args.only not in name:
                    continue
                for stream in (True, False):
                    for u in (primary, backup):
                        control(u, "/__control/reset", {})
                    control(primary, "/__control/scenarios", {"default": resolve(spec, args.words, args.timeout)})
                    if "backup slower" in name:
                        control(backup, "/__control/scenarios", {"delay_ms": 1000 * args.timeout})
                    body = {"model": "chat", "messages": [{"role": "user", "content": message}], "stream": stream}
                    outcome, took, rid = play(gw.url, body, answer)
                    counts = [sum(1 for q in control(u, "/__control/requests") if q["path"] == "/v1/chat/completions")
                              for u in (primary, backup)]
                    row = ledger(db, rid)
                    if outcome == "complete" and row.get("engine") != "primary":
                        outcome = "rescued"  # complete, thanks to the fallback
                    hops = json.loads(row.get("hops") or "[]")
                    splices = [f"{h['engine']}:{h.get('code')} after {h['after_chars']} chars, "
                               f"{h['rescue']} by {h['by']}"
                               for h in hops if "rescue" in h]
                    splices += [f"hedge: {h['engine']} lost" for h in hops if h.get("code") == "hedge_lost"]
                    ttft = f"{row['ttft_ms'] / 1000:.2f}" if row.get("ttft_ms") is not None else "-"
                    print(f"| {name} | {'stream' if stream else 'JSON'} | {outcome} | {took:.2f} | {ttft} | "
                          f"{counts[0]} / {counts[1]} | {row.get('engine')} | {'; '.join(splices) or '-'} |",
                          flush=True)
        finally:
            gw.stop()


if __name__ == "__main__":
    main()
