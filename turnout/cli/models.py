"""`turnout models`: the model registry (engines, licenses, weights checksums, pins).

    turnout models [--config F] [--json]     list every engine and what it runs
    turnout models pin [--config F]          the sha256 pins to paste into turnout.yaml
    turnout models verify [--config F]       exit 1 if any pinned weights changed, a license is
                                             refused by policy.licenses or an adapter fails its
                                             manifest check (a CI gate)
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="the model registry: licenses, weights checksums, pins",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=("list", "pin", "verify"), default="list")
    p.add_argument("--config", default=None, help="turnout.yaml (default: the embedded configuration)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from turnout.config import load_config
    from turnout.registry import describe

    cfg = load_config(args.config)
    records = describe(cfg)
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
    elif args.action == "pin":
        print("# merge into turnout.yaml: each engine refuses to start if its weights change,")
        print("# the gateway if the PII guard's model changes")
        print("engines:")
        for r in records:
            if r.sha256 and not r.engine.startswith("guard:"):
                print(f"  {r.engine}:\n    sha256: {r.sha256}   # {r.source or r.weights}")
        for r in records:
            if r.engine == "guard:pii" and r.sha256:
                print(f"guards:\n  pii_model_sha256: {r.sha256}   # {r.source or r.weights}")
    else:
        print(f"{'engine':<12}{'dialect':<11}{'locality':<9}{'license':<14}{'status':<10}{'sha256':<18}{'size':>9}"
              "  source / model")
        for r in records:
            size = f"{r.size_bytes / 1e6:.1f} MB" if r.size_bytes else "-"
            sha = (r.sha256[:16] if r.sha256 else "-")
            where = r.refused or r.adapter_refused or r.error or r.source or r.model
            print(f"{r.engine:<12}{r.dialect:<11}{r.locality:<9}{(r.license or '-'):<14}{r.status:<10}{sha:<18}"
                  f"{size:>9}  {where}")
    bad = [r for r in records if r.status in ("MISMATCH", "missing", "REFUSED")]
    if args.action == "verify":
        for r in bad:
            why = r.refused or r.adapter_refused or r.error or f"weights sha256 {r.sha256} != pinned {r.pinned}"
            print(f"turnout: {r.engine}: {why}")
        return 1 if bad else 0
    return 0
