"""`turnout dataset build`: a chat dataset from captured traffic, in the base model's chat format,
with its card (docs/ownership.md, "Datasets"; the rules are in turnout/evals/dataset_build.py).

    turnout dataset build --config turnout.yaml --tenant T [--tenant T2 | --all-tenants]
                          [--route R]... [--function F]... [--since DATE] [--until DATE]
                          [--sources distill,judged,checked,rated] [--min-rating 0.75]
                          [--validation 0.1] [--base ENGINE | --gguf FILE] --out DIR [--json]

Writes DIR/train.jsonl, DIR/validation.jsonl and DIR/card.json (counts per source and why others
were left out, the selection, date ranges, each teacher engine's terms, the base GGUF's and each
file's sha256). One tenant's data by default: a dataset of several tenants' traffic is asked for by
name (--tenant, repeated) or with --all-tenants, since an adapter trained on it answers every tenant.
Exit status: 0 written; 3 refused (an engine's terms forbid training on its outputs, or do not say,
and policy.distillation.allow does not name it); 2 bad input (nothing selected included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from turnout.cli.data import store_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dataset", help="build a training set from captured traffic", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    b = dsub.add_parser("build", help="captured traffic -> train/validation JSONL in the base model's chat format")
    store_args(b)
    b.add_argument("--tenant", action="append", default=[], help="a tenant whose traffic goes in (repeatable)")
    b.add_argument("--all-tenants", action="store_true", help="every tenant's traffic")
    b.add_argument("--route", action="append", default=[], help="only these routes (repeatable)")
    b.add_argument("--function", action="append", default=[], help="only these functions (repeatable)")
    b.add_argument("--since", help="from this date or time (ISO 8601, UTC unless it says)")
    b.add_argument("--until", help="before this date or time")
    b.add_argument("--sources", default="distill,judged,checked,rated",
                   help="outcomes that make an example, best first: distill, judged, checked, rated")
    b.add_argument("--min-rating", type=float, default=0.75, help="feedback satisfaction a rated answer needs (0-1)")
    b.add_argument("--validation", type=float, default=0.1, help="share of episodes held out, the newest")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--base", help="the llamacpp engine whose model is trained (default: the first one)")
    g.add_argument("--gguf", help="the base model's GGUF file (its chat template is used)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--json", action="store_true", help="print the card")
    b.set_defaults(func=build)


def _when(value: str | None, what: str) -> float | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} {value!r}: use an ISO 8601 date or time, e.g. 2026-12-01 or 2026-12-01T12:00") \
            from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _base(cfg: Any, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The base GGUF and what the card says of it."""
    from turnout.engines.llamacpp import LlamaCppEngineConfig
    from turnout.engines.smollm2 import packaged_gguf
    from turnout.weights import sha256_file

    if args.gguf:
        path = Path(args.gguf)
        if not path.is_file():
            raise ValueError(f"--gguf {path}: no such file")
        return path, {"engine": None, "gguf_sha256": sha256_file(path), "license": None}
    local = {n: e for n, e in cfg.engines.items() if isinstance(e, LlamaCppEngineConfig)}
    if args.base and args.base not in local:
        raise ValueError(f"--base {args.base!r} is not a llamacpp engine of the config "
                         f"({', '.join(local) or 'none'}); name one, or give --gguf")
    if not local:
        raise ValueError("the config has no llamacpp engine to train; give --gguf FILE for the base model")
    name = args.base or next(iter(local))
    e = local[name]
    path = Path(e.model_path) if e.model_path else packaged_gguf(e.packaged)
    return path, {"engine": name, "model": e.model_name, "gguf_sha256": sha256_file(path), "license": e.license}


def build(args: argparse.Namespace) -> int:
    from turnout.cli.data import open_store
    from turnout.config import load_config
    from turnout.evals import chat_format
    from turnout.evals.dataset_build import SOURCES, NoExamples, Selection, TermsRefused, write_card
    from turnout.evals.dataset_build import build as build_dataset

    def fail(message: str, code: int = 2) -> int:
        print(f"turnout dataset: error: {message}", file=sys.stderr)
        return code

    started = time.monotonic()
    if not args.config:
        return fail("--config turnout.yaml is needed: engine terms, policy.distillation and the functions' golden "
                    "sets come from it")
    if bool(args.tenant) == bool(args.all_tenants):
        return fail("name the tenants whose traffic goes in (--tenant T, repeatable) or give --all-tenants")
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        return fail(f"--sources: {', '.join(unknown) or 'empty'}: use some of {', '.join(SOURCES)}")
    if not 0.0 <= args.validation < 1.0:
        return fail("--validation is a share in [0, 1)")
    if not 0.0 <= args.min_rating <= 1.0:
        return fail("--min-rating is a satisfaction in [0, 1]")
    try:
        cfg = load_config(args.config)
        since, until = _when(args.since, "--since"), _when(args.until, "--until")
        gguf, base = _base(cfg, args)
        fmt = chat_format.load(gguf)
        store = open_store(args)
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    sel = Selection(tenants=args.tenant, routes=args.route, functions=args.function, since=since,
                    until=until, sources=sources, min_rating=args.min_rating, validation=args.validation)
    try:
        rows = store.rows(tenants=args.tenant or None, routes=args.route or None, functions=args.function or None,
                          since=since, until=until)
    finally:
        store.close()
    if args.all_tenants:
        sel.tenants = sorted({str(r["tenant"]) for r in rows})
    out = Path(args.out)
    try:
        card = build_dataset(cfg, rows, sel, fmt, out, base)
    except TermsRefused as exc:
        return fail(str(exc), 3)
    except NoExamples as exc:
        return fail(str(exc))
    path = write_card(out, card, started)
    if args.json:
        print(json.dumps(card, indent=2, sort_keys=True))
    else:
        c = card["counts"]
        sources_line = ", ".join(f"{k} {v}" for k, v in c["by_source"].items() if v) or "none"
        left = ", ".join(f"{k} {v}" for k, v in c["excluded"].items() if v) or "none"
        print(f"{c['examples']} examples from {c['captured']} captured requests ({sources_line}); left out: {left}\n"
              f"train {c['train']}, validation {c['validation']} -> {out}/train.jsonl, validation.jsonl; card {path}")
    return 0
