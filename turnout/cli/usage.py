"""`turnout usage`: requests, tokens, cost, latency, local share and satisfaction per route and engine.

    turnout usage [--db FILE] [--since HOURS] [--json]
    turnout usage --dsn postgresql://user@host/db [--schema public]   # the scale-out ledger
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("usage", help="summarise the ledger per route and per engine", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=os.environ.get("TURNOUT_DB", ".turnout/turnout.sqlite"))
    p.add_argument("--dsn", default=None, help="read the PostgreSQL ledger at this DSN instead of the SQLite file")
    p.add_argument("--schema", default="public", help="schema of the PostgreSQL ledger tables (default public)")
    p.add_argument("--since", type=float, default=None, help="only the last N hours")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from turnout.ledger.usage import render, summarize

    since = time.time() - args.since * 3600 if args.since is not None else None
    if args.dsn:
        from turnout.ledger.postgres import read_feedback, read_rows

        rows = read_rows(args.dsn, since, schema=args.schema)
        feedback = read_feedback(args.dsn, since, schema=args.schema)
    else:
        from turnout.ledger.feedback import read_feedback as read_sqlite_feedback
        from turnout.ledger.sqlite import read_rows as read_sqlite_rows

        if not Path(args.db).is_file():
            raise FileNotFoundError(f"{args.db}: no ledger yet (start `turnout serve` and send a request, or pass --db)")
        rows = read_sqlite_rows(args.db, since)
        feedback = read_sqlite_feedback(args.db, since)
    summary = summarize(rows, feedback)
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0
