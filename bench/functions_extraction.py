"""Validation as a routing signal, measured: a structured extraction function on the embedded
model (SmolLM2-135M, grammar-constrained JSON), escalating answers that fail its checks.

    python bench/functions_extraction.py [--n 60] [--seed 7] [--data PATH]

Data: presidio-research's synthetic PII sentences (/work/shared/data/pii, MIT), each labelled
with its spans; the gold answer is the first PERSON and the first EMAIL_ADDRESS span in the text (by
position: presidio does not list spans in reading order), null when there is none. Function:
bench/functions/extract_contact (output schema; checks: values copied from the text, an e-mail's shape;
escalate_on: invalid_output -> route ``strong``).

The "frontier" is a stand-in: no paid API is reachable here, so the loopback OpenAI upstream
answers each escalation with the labelled answer. Accuracy on escalated items is therefore
100% by construction, and the hybrid accuracy printed is an upper bound; what is measured is
the share handled locally, the local answers' accuracy, and the cost from the gateway's ledger
(local engine: its hourly cost while busy; escalations: priced as gpt-4o-mini, $0.15 / $0.60
per 1M tokens; all-frontier: the ledger's baseline cost, the same tokens at the frontier price).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/pii/data_synth_dataset_v2.json")


def items(path: Path, n: int, seed: int) -> list[dict[str, Any]]:
    records = json.loads(path.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    rng.shuffle(records)
    out = []
    for r in records[:n]:
        first = {}
        for s in sorted(r["spans"], key=lambda s: s["start_position"]):  # the first in the text, not the first listed
            first.setdefault(s["entity_type"], s["entity_value"])
        out.append({"text": r["full_text"],
                    "gold": {"person": first.get("PERSON"), "email": first.get("EMAIL_ADDRESS")}})
    return out


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return str(a).strip().casefold() == str(b).strip().casefold()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    from turnout.testing.procs import start_server

    tmp = Path(tempfile.mkdtemp(prefix="fn-bench-"))
    up = start_server("turnout.testing.upstream")
    cfg = {
        "engines": {
            "small": {"dialect": "llamacpp", "n_ctx": 2048},
            "big": {"dialect": "openai", "locality": "remote", "base_url": up.url + "/v1", "model": "fake-big",
                    "pricing": {"input_per_m": 0.15, "output_per_m": 0.60}},
        },
        "routes": {"private": {"chain": ["small"]}, "strong": {"chain": ["big"]}},
        "guards": {"enabled": False},
        "functions": {"path": str(ROOT / "bench" / "functions")},
    }
    (tmp / "turnout.yaml").write_text(yaml.safe_dump(cfg))
    db = tmp / "ledger.sqlite"
    gw = start_server("turnout", "serve", "--config", str(tmp / "turnout.yaml"), "--db", str(db), timeout=120)
    data = items(args.data, args.n, args.seed)
    results = []
    t0 = time.perf_counter()
    try:
        with httpx.Client(timeout=300) as client:
            for i, it in enumerate(data):
                client.post(up.url + "/__control/reset")
                client.post(up.url + "/__control/scenarios", json={"replies": {"fake-big": [json.dumps(it["gold"])]}})
                resp = client.post(gw.url + "/v1/chat/completions", json={
                    "model": "fn:extract_contact",
                    "messages": [{"role": "user", "content": json.dumps({"text": it["text"]})}]})
                h = resp.headers
                answer = (json.loads(resp.json()["choices"][0]["message"]["content"]) if resp.status_code == 200
                          else None)
                ok = answer is not None and all(same(answer.get(k), v) for k, v in it["gold"].items())
                results.append({"engine": h.get("x-turnout-engine"), "attempts": h.get("x-turnout-function-attempts"),
                                "status": resp.status_code, "correct": ok})
                print(f"{i + 1:>3}/{len(data)} {h.get('x-turnout-engine')!s:<6} "
                      f"{h.get('x-turnout-function-attempts')!s:<22} "
                      f"{'ok ' if ok else 'bad'} {json.dumps(answer)[:70]}", file=sys.stderr)
    finally:
        gw.stop()
        up.stop()
    wall = time.perf_counter() - t0
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT function_attempt, function_outcome, engine, cost_usd, baseline_cost_usd FROM requests "
                        "WHERE function = 'extract_contact'").fetchall()
    conn.close()
    n = len(results)
    local = [r for r in results if r["engine"] == "small"]
    esc = [r for r in results if r["engine"] == "big"]
    cost = sum(r[3] for r in rows)
    finals = [r for r in rows if r[1] in ("valid",) or r[0] == "escalated"]
    frontier = sum(r[4] for r in rows if r[0] == "first")  # all-frontier: each call once, at the frontier's price
    reasons = Counter((r[1] or "").split(":")[1].strip() if (r[1] or "").startswith("invalid") else "valid"
                      for r in rows if r[0] in ("first", "retry"))
    print(f"items {n} (seed {args.seed}), wall {wall:.0f} s, ledger rows {len(rows)}, final rows {len(finals)}")
    print(f"handled locally: {len(local)}/{n} = {len(local) / n:.3f}; escalated: {len(esc)}/{n}; "
          f"errors: {sum(r['status'] != 200 for r in results)}")
    print(f"accuracy of local answers kept: {sum(r['correct'] for r in local)}/{len(local) or 1} = "
          f"{sum(r['correct'] for r in local) / max(len(local), 1):.3f}")
    print(f"hybrid accuracy (escalations answered by the labelled stand-in, an upper bound): "
          f"{sum(r['correct'] for r in results) / n:.3f}; all-frontier stand-in: 1.000 by construction")
    print(f"cost: hybrid ${cost:.6f} vs all-frontier ${frontier:.6f} "
          f"(ratio {cost / frontier if frontier else float('nan'):.3f})")
    print("local verdicts (first and retry attempts): " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
