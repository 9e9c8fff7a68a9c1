"""`turnout usage`: requests, tokens, cost, latency and local share per route and engine."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("usage", help="summarise the ledger per route and per engine")
    p.add_argument("--db", default=os.environ.get("TURNOUT_DB", ".turnout/turnout.sqlite"))
    p.add_argument("--since", type=float, default=None, help="only the last N hours")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from turnout.ledger.sqlite import read_rows
    from turnout.ledger.usage import render, summarize

    if not Path(args.db).is_file():
        raise FileNotFoundError(f"{args.db}: no ledger yet (start `turnout serve` and send a request, or pass --db)")
    since = time.time() - args.since * 3600 if args.since is not None else None
    summary = summarize(read_rows(args.db, since))
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0
