"""`turnout eval golden`: a golden set through the gateway, and a regression gate.

    turnout eval golden --golden examples/golden.jsonl [--config F | --url URL] [--model auto]
                        [--save report.json] [--baseline report.json] [--max-drop 0.0] [--min-pass R]

Each line of the golden file is a JSON object: ``prompt`` (or ``messages``), one check —
``contains``, ``equals`` or ``regex``, case-insensitive unless ``"case_sensitive": true`` —
and optionally ``id``, ``model``, ``max_tokens``. Every item is sent with temperature 0 and a fixed
seed, through a running
gateway (``--url``) or the pipeline in-process (``--config``, default: the embedded setup),
so routing, guards and engines are what production runs. The report gives the pass rate,
each item's answer, route, engine and latency, and the weights sha256 of every engine.

The gate (exit status 1): any item got an error instead of an answer (HTTP 401 from a
gateway that wants a key, 503 when no engine is ready, ...: an error measures nothing, so a
run with errors never passes, whatever ``--min-pass`` says), the pass rate is under
``--min-pass``, or, against a saved ``--baseline``, it fell by more than ``--max-drop``;
items that passed in the baseline and fail now are listed. Run it when weights, prompts, routes or guards change.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

CHECKS = ("contains", "equals", "regex")
SEED = 7


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("golden", help="run a golden set through the gateway; a regression gate",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--golden", required=True, help="JSON lines: prompt|messages + contains|equals|regex")
    p.add_argument("--config", default=None, help="turnout.yaml for in-process mode (default: embedded setup)")
    p.add_argument("--url", default=None, help="a running gateway instead of in-process")
    p.add_argument("--api-key", default=None)
    p.add_argument("--model", default="auto", help="route alias or engine for items without their own (auto)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--save", type=Path, default=None, help="write the report here (a baseline for later runs)")
    p.add_argument("--baseline", type=Path, default=None, help="a report saved by an earlier run")
    p.add_argument("--max-drop", type=float, default=0.0, help="pass-rate drop allowed against --baseline (0)")
    p.add_argument("--min-pass", type=float, default=0.0, help="lowest acceptable pass rate (0..1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def load_golden(path: str) -> list[dict[str, Any]]:
    items = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
            if not isinstance(item, dict) or not (isinstance(item.get("prompt"), str)
                                                  or isinstance(item.get("messages"), list)):
                raise ValueError(f"{path}:{n}: needs 'prompt' (a string) or 'messages' (a list)")
            checks = [c for c in CHECKS if c in item]
            if len(checks) != 1 or not isinstance(item[checks[0]], str):
                raise ValueError(f"{path}:{n}: needs exactly one of {', '.join(CHECKS)} (a string)")
            if checks[0] == "regex":
                try:
                    re.compile(item["regex"])
                except re.error as exc:
                    raise ValueError(f"{path}:{n}: bad regex: {exc}") from None
            item.setdefault("id", str(n))
            items.append(item)
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def passes(item: dict[str, Any], answer: str) -> bool:
    """The item's check on the answer; case-insensitive unless the item says ``"case_sensitive": true``."""
    a = answer.strip()
    fold = (lambda x: x) if item.get("case_sensitive") else str.casefold
    if "contains" in item:
        return fold(item["contains"]) in fold(a)
    if "equals" in item:
        return fold(a).rstrip(".") == fold(item["equals"]).rstrip(".")
    return re.search(item["regex"], a, 0 if item.get("case_sensitive") else re.IGNORECASE) is not None


def _client(args: argparse.Namespace) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.url:
        return httpx.Client(base_url=args.url, timeout=300, headers=headers)
    from starlette.testclient import TestClient

    from turnout.config import load_config
    from turnout.server.app import create_app

    return TestClient(create_app(load_config(args.config)), headers=headers)


def run_items(client: Any, items: list[dict[str, Any]], model: str, max_tokens: int,
              progress: bool = True) -> list[dict[str, Any]]:
    from tqdm import tqdm

    rows = []
    for item in tqdm(items, desc="golden", file=sys.stderr, disable=not progress, mininterval=0.5):
        messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
        body = {"model": item.get("model", model), "messages": messages, "temperature": 0, "seed": SEED,
                "max_tokens": int(item.get("max_tokens", max_tokens))}
        t0 = time.perf_counter()
        resp = client.post("/v1/chat/completions", json=body)
        ms = (time.perf_counter() - t0) * 1000
        h = resp.headers
        if resp.status_code != 200:
            try:
                message = resp.json().get("error", {}).get("message", resp.text)
            except ValueError:
                message = resp.text[:200]
            answer, ok, err = "", False, f"HTTP {resp.status_code}: {message}"
        else:
            answer, err = resp.json()["choices"][0]["message"]["content"] or "", None
            ok = passes(item, answer)
        rows.append({"id": item["id"], "pass": ok, "answer": answer, "error": err, "status": resp.status_code,
                     "route": h.get("x-turnout-route"), "engine": h.get("x-turnout-engine"), "ms": round(ms, 1)})
    return rows


def gate(report: dict[str, Any], baseline: dict[str, Any] | None, max_drop: float, min_pass: float) -> list[str]:
    """Why the gate fails (empty: it passes)."""
    why = []
    rate = report["pass_rate"]
    errored = [r for r in report["items"] if r.get("error")]
    if errored:
        statuses = sorted({str(r.get("status")) for r in errored})
        why.append(f"{len(errored)} of {len(report['items'])} item(s) got an error instead of an answer "
                   f"(HTTP {', '.join(statuses)}; first: {errored[0]['error'][:120]})")
    if rate < min_pass:
        why.append(f"pass rate {rate:.3f} < --min-pass {min_pass:.3f}")
    if baseline is not None:
        base = baseline["pass_rate"]
        if base - rate > max_drop + 1e-12:
            why.append(f"pass rate fell {base:.3f} -> {rate:.3f} (more than --max-drop {max_drop:.3f})")
        before = {r["id"]: r["pass"] for r in baseline["items"]}
        lost = [r["id"] for r in report["items"] if before.get(r["id"]) and not r["pass"]]
        if lost:
            why.append(f"{len(lost)} item(s) passed in the baseline and fail now: {', '.join(lost[:20])}")
    return why


def run(args: argparse.Namespace) -> int:
    if args.url and args.config:
        raise ValueError("give --url (a running gateway) or --config (in-process), not both")
    items = load_golden(args.golden)
    baseline = json.loads(args.baseline.read_text(encoding="utf-8")) if args.baseline else None
    with _client(args) as client:
        rows = run_items(client, items, args.model, args.max_tokens)
        models = client.get("/v1/models").json()["data"]
    weights = {m["id"]: m["turnout"].get("weights_sha256") for m in models if m["turnout"].get("kind") == "engine"}
    passed = sum(r["pass"] for r in rows)
    report = {"golden": args.golden, "items": rows, "passed": passed, "n": len(rows),
              "pass_rate": passed / len(rows), "weights_sha256": weights, "seed": SEED}
    why = gate(report, baseline, args.max_drop, args.min_pass)
    report["gate"] = {"ok": not why, "reasons": why}
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in rows:
            print(f"{'PASS' if r['pass'] else 'FAIL'}  {r['id']:<14} {r['engine'] or '-':<10} {r['ms']:>8.0f} ms  "
                  f"{(r['error'] or r['answer']).strip()[:70]!r}")
        print(f"pass rate {passed}/{len(rows)} = {report['pass_rate']:.3f}"
              + (f" (baseline {baseline['pass_rate']:.3f})" if baseline else ""))
        for line in why:
            print(f"gate: FAIL: {line}")
        if not why:
            print("gate: ok")
    return 1 if why else 0
