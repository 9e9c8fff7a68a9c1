"""`turnout eval function NAME`: a function's golden set through each variant; a regression gate.

    turnout eval function NAME [--variant V] [--config F | --url URL] [--api-key K]
                               [--baseline FILE] [--save-baseline] [--max-drop 0.0] [--min-pass R] [--json]

Every golden item goes through the gateway as ``model: "fn:NAME"`` with ``metadata.variant``
pinning the variant, in-process (``--config``) or against a running gateway (``--url``), so
checks, retries and escalation run as in production. An item passes when its scorer (exact,
contains, regex, json_schema, json_fields) accepts the answer the caller got.

The gate (exit status 1): a variant's pass rate is under ``--min-pass`` (default: the
function's ``min_pass``), or under its saved baseline by more than ``--max-drop``; items that
passed in the baseline and fail now are listed. The baseline is ``<function>/baseline.json``
(``--save-baseline`` writes it; commit it). The report names each variant's template hash and
the weights sha256 of every engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("function", help="run a function's golden set through each variant; a regression gate",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--variant", action="append", default=None, help="only this variant (repeatable)")
    p.add_argument("--config", default=None, help="turnout.yaml with functions.path (in-process unless --url)")
    p.add_argument("--url", default=None, help="a running gateway instead of in-process")
    p.add_argument("--api-key", default=None)
    p.add_argument("--baseline", type=Path, default=None, help="default: <function folder>/baseline.json")
    p.add_argument("--save-baseline", action="store_true", help="write this run as the baseline")
    p.add_argument("--max-drop", type=float, default=0.0, help="pass-rate drop allowed against the baseline (0)")
    p.add_argument("--min-pass", type=float, default=None, help="lowest pass rate (default: the function's min_pass)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _client(args: argparse.Namespace, cfg: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.url:
        return httpx.Client(base_url=args.url, timeout=600, headers=headers)
    from starlette.testclient import TestClient

    from turnout.server.app import create_app

    return TestClient(create_app(cfg), headers=headers)


def run_variant(client: Any, fn: Any, variant: str) -> list[dict[str, Any]]:
    from turnout.functions import golden

    rows = []
    for item in fn.golden:
        body = {"model": f"fn:{fn.name}", "metadata": {"variant": variant, "variables": json.dumps(item["variables"])},
                "messages": [{"role": "user", "content": "(variables in metadata)"}]}
        t0 = time.perf_counter()
        resp = client.post("/v1/chat/completions", json=body)
        ms = (time.perf_counter() - t0) * 1000
        h = resp.headers
        if resp.status_code == 200:
            answer, err = resp.json()["choices"][0]["message"]["content"] or "", None
            ok = golden.score(item, answer, fn)
        else:
            answer, ok, err = "", False, resp.json().get("error", {}).get("message", resp.text)
        rows.append({"id": item["id"], "pass": ok, "answer": answer, "error": err, "status": resp.status_code,
                     "engine": h.get("x-turnout-engine"), "attempts": h.get("x-turnout-function-attempts"),
                     "template_hash": h.get("x-turnout-template-hash"), "ms": round(ms, 1)})
    return rows


def gate(report: dict[str, Any], baseline: dict[str, Any] | None, max_drop: float, min_pass: float) -> list[str]:
    why = []
    for name, v in report["variants"].items():
        if v["pass_rate"] < min_pass:
            why.append(f"{name}: pass rate {v['pass_rate']:.3f} < minimum {min_pass:.3f}")
        base = (baseline or {}).get("variants", {}).get(name)
        if base is None:
            continue
        if base["pass_rate"] - v["pass_rate"] > max_drop + 1e-12:
            why.append(f"{name}: pass rate fell {base['pass_rate']:.3f} -> {v['pass_rate']:.3f} "
                       f"(template {base.get('template_hash')} -> {v['template_hash']}; "
                       f"more than --max-drop {max_drop:.3f})")
        before = {r["id"]: r["pass"] for r in base.get("items", [])}
        lost = [r["id"] for r in v["items"] if before.get(r["id"]) and not r["pass"]]
        if lost:
            why.append(f"{name}: {len(lost)} item(s) passed in the baseline and fail now: {', '.join(lost[:20])}")
    return why


def run(args: argparse.Namespace) -> int:
    from turnout.cli.functions import _function

    if args.url and args.config is None:
        raise ValueError("--url needs --config too: the function's files (golden set, schemas) are read locally")
    cfg, fn = _function(args.config, args.name)
    if not fn.golden:
        raise ValueError(f"fn:{fn.name} has no golden set (golden.jsonl in {fn.folder})")
    names = args.variant or list(fn.variants)
    unknown = [n for n in names if n not in fn.variants]
    if unknown:
        raise ValueError(f"fn:{fn.name} has no variant(s) {', '.join(unknown)} ({', '.join(fn.variants)})")
    base_path = args.baseline or fn.folder / "baseline.json"
    baseline = json.loads(base_path.read_text(encoding="utf-8")) if base_path.is_file() else None
    variants: dict[str, Any] = {}
    with _client(args, cfg) as client:
        for name in names:
            print(f"fn:{fn.name} variant {name}: {len(fn.golden)} item(s)", file=sys.stderr)
            rows = run_variant(client, fn, name)
            passed = sum(r["pass"] for r in rows)
            variants[name] = {"template_hash": fn.variants[name].template_hash, "route": fn.variants[name].spec.route,
                              "passed": passed, "n": len(rows), "pass_rate": passed / len(rows), "items": rows}
        models = client.get("/v1/models").json()["data"]
    weights = {m["id"]: m["turnout"].get("weights_sha256") for m in models if m["turnout"].get("kind") == "engine"}
    report = {"function": fn.name, "variants": variants, "weights_sha256": weights}
    min_pass = fn.spec.min_pass if args.min_pass is None else args.min_pass
    why = gate(report, baseline, args.max_drop, min_pass)
    report["gate"] = {"ok": not why, "reasons": why}
    if args.save_baseline:
        base_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, v in variants.items():
            for r in v["items"]:
                print(f"{'PASS' if r['pass'] else 'FAIL'}  {name:<10} {r['id']:<14} {r['engine'] or '-':<10} "
                      f"{r['attempts'] or '-':<22} {(r['error'] or r['answer']).strip()[:60]!r}")
            b = (baseline or {}).get("variants", {}).get(name)
            print(f"{name} @ {v['template_hash']}: {v['passed']}/{v['n']} = {v['pass_rate']:.3f}"
                  + (f" (baseline {b['pass_rate']:.3f} @ {b.get('template_hash')})" if b else ""))
        for engine, sha in weights.items():
            print(f"engine {engine}: weights sha256 {sha or '-'}")
        print("\n".join(f"gate: FAIL: {w}" for w in why) or "gate: ok")
    return 1 if why else 0
