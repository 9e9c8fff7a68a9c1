"""`turnout guards`: refit the injection head per tenant from its labelled traffic; history; rollback.

    turnout guards fit --from-traffic [--tenant T] [--db FILE] [--heads DIR] [--gate FILE]
                       [--floor 0.02] [--prior 1.0] [--json]
    turnout guards history --tenant T [--heads DIR] [--json]
    turnout guards rollback --tenant T [--heads DIR]

``fit`` reads the tenant's guard labels (``POST /v1/feedback`` with ``kind: guard`` on requests the
injection guard flagged, blocked or sampled; ``turnout.ledger.guard_examples``), refits the head on
the shipped head as prior, and promotes it only if recall on the shipped attack gate set stays at or
above the shipped head's minus ``--floor`` and the tenant's false positives drop
(``turnout.guards.learn``). Without ``--tenant`` every tenant with labels is fitted. Heads live in
``--heads`` (``guards.learning.heads``, default ``.turnout/guards``), one folder per tenant; a running
gateway serves a promotion or rollback within ``guards.learning.reload_s``. Exit status: 0 promoted
(each tenant), 3 refused (any), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REFUSED = 3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("guards", help="refit the injection guard per tenant from labelled traffic; history; rollback",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gsub = p.add_subparsers(dest="guards_command", required=True, metavar="ACTION")

    fit = gsub.add_parser("fit", help="refit a tenant's injection head and promote it if the gate passes")
    fit.add_argument("--from-traffic", action="store_true", required=True,
                     help="train on the tenant's guard labels in the ledger (the only source for now)")
    fit.add_argument("--tenant", default=None, help="the tenant (default: every tenant with guard labels)")
    fit.add_argument("--db", default=os.environ.get("TURNOUT_DB", ".turnout/turnout.sqlite"))
    fit.add_argument("--heads", type=Path, default=Path(".turnout/guards"), help="the heads folder "
                     "(guards.learning.heads)")
    fit.add_argument("--gate", type=Path, default=None, help="the attack gate set (default: the shipped one)")
    fit.add_argument("--floor", type=float, default=0.02,
                     help="largest drop in gate recall accepted, vs the shipped head (default 0.02)")
    fit.add_argument("--prior", type=float, default=10.0,
                     help="strongest pull towards the shipped weights tried (default 10)")
    fit.add_argument("--threshold", type=float, default=None,
                     help="the block threshold the gateway runs at (guards.injection_threshold) when it is not the "
                          "shipped head's: the gate and the tenant's labels are judged there")
    fit.add_argument("--json", action="store_true")
    fit.set_defaults(func=run_fit)

    hist = gsub.add_parser("history", help="the tenant's heads and gate decisions, oldest first")
    hist.add_argument("--tenant", required=True)
    hist.add_argument("--heads", type=Path, default=Path(".turnout/guards"))
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=run_history)

    back = gsub.add_parser("rollback", help="serve the head that served before the current one")
    back.add_argument("--tenant", required=True)
    back.add_argument("--heads", type=Path, default=Path(".turnout/guards"))
    back.set_defaults(func=run_rollback)


def run_fit(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(args.db).is_file():
        raise FileNotFoundError(f"{args.db}: no ledger yet (pass --db)")
    from turnout.guards.heads import HeadRegistry, load_head, tenant_folder
    from turnout.guards.injection import InjectionHead, WindowEncoder
    from turnout.guards.learn import GATE, GateSet, load_gate, refit
    from turnout.ledger.guard_examples import SQLiteGuardExamples

    store = SQLiteGuardExamples(args.db)
    try:
        tenants = [args.tenant] if args.tenant else store.tenants()
        if not tenants:
            raise ValueError("no tenant has guard labels yet (POST /v1/feedback with kind 'guard')")
        base = InjectionHead.load()
        if args.threshold is not None:
            if not 0 < args.threshold < 1:
                raise ValueError(f"--threshold {args.threshold}: a score between 0 and 1")
            base.block_threshold = args.threshold
            base.flag_threshold = min(base.flag_threshold, args.threshold)
        encoder = WindowEncoder()
        texts, labels = load_gate(args.gate or GATE)
        gate = GateSet.embed(texts, labels, encoder, base, cache=args.heads / ".cache")
        results: list[dict[str, Any]] = []
        for tenant in tenants:
            registry = HeadRegistry(tenant_folder(args.heads, tenant))
            with registry.lock():
                examples, skipped = store.examples(tenant, encoder.fingerprint)
                current_path = registry.current()
                current = load_head(current_path, base) if current_path is not None else None
                outcome = refit(base, current, examples, gate, args.floor, args.prior, tenant)
                path = registry.add(outcome.candidate) if outcome.candidate is not None else None
                fields = {"reason": outcome.reason, "labels": len(examples), "skipped_other_encoder": skipped,
                          **outcome.figures}
                if outcome.promote and path is not None:
                    registry.promote(path, **fields)
                else:
                    registry.record("refused", path, **fields)
            results.append({"tenant": tenant, "promoted": outcome.promote, "reason": outcome.reason,
                            "head": str(path) if path else None, "labels": len(examples),
                            "skipped_other_encoder": skipped, **outcome.figures})
    finally:
        store.close_now()
    if args.json:
        print(json.dumps(results if args.tenant is None else results[0], indent=2))
    else:
        for r in results:
            verb = "promoted" if r["promoted"] else "refused"
            print(f"{r['tenant']}: {verb} {Path(r['head']).name if r['head'] else 'no candidate'} "
                  f"({r['labels']} labels): {r['reason']}")
    return 0 if all(r["promoted"] for r in results) else REFUSED


def run_history(args: argparse.Namespace) -> int:
    from turnout.guards.heads import HeadRegistry, tenant_folder

    registry = HeadRegistry(tenant_folder(args.heads, args.tenant))
    events = registry.history()
    current = registry.current()
    if args.json:
        print(json.dumps({"tenant": args.tenant, "current": current.name if current else None, "events": events},
                         indent=2))
        return 0
    if not events:
        print(f"{args.tenant}: no heads in {registry.folder} (the shipped head serves)")
        return 0
    print(f"{'when':<26} {'event':<9} {'head':<11} {'labels':>6} {'recall':>7} {'FP':>4}  reason")
    for e in events:
        c = e.get("candidate") or {}
        recall = f"{c['gate_recall']:.3f}" if c.get("gate_recall") is not None else "-"
        print(f"{e['ts']:<26} {e['event']:<9} {str(e.get('artifact') or '-'):<11} {e.get('labels', '-')!s:>6} "
              f"{recall:>7} {c.get('tenant_fp_blocked', '-')!s:>4}  {e.get('reason', '')}")
    print(f"serving: {current.name if current else 'the shipped head'}", file=sys.stderr)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from turnout.guards.heads import HeadRegistry, tenant_folder

    registry = HeadRegistry(tenant_folder(args.heads, args.tenant))
    before = registry.current()
    target = registry.rollback()
    print(f"{args.tenant}: now serving {target.name if target else 'the shipped head'} "
          f"(was {before.name if before else 'the shipped head'}); a running gateway picks it up within "
          "guards.learning.reload_s")
    return 0
