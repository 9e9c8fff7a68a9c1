"""`turnout usage`: requests, tokens, cost, latency, local share and satisfaction per route and engine.

    turnout usage [--db FILE] [--since HOURS] [--json]
    turnout usage --dsn postgresql://user@host/db [--schema public]   # the scale-out ledger
    TURNOUT_DSN=postgresql://... turnout usage                          # the same, the DSN kept out of `ps`

--dsn defaults to $TURNOUT_DSN (a password on the command line is visible to every user of the
host); --db names the SQLite file instead, and wins over $TURNOUT_DSN.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("usage", help="summarise the ledger per route and per engine", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=None, help="SQLite file (default $TURNOUT_DB or .turnout/turnout.sqlite)")
    p.add_argument("--dsn", default=None, help="read the PostgreSQL ledger at this DSN instead of the SQLite file "
                                               "(default $TURNOUT_DSN, which keeps a password out of `ps`)")
    p.add_argument("--schema", default="public", help="schema of the PostgreSQL ledger tables (default public)")
    p.add_argument("--since", type=float, default=None, help="only the last N hours")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _labels(args: argparse.Namespace, since: float | None) -> list[dict[str, Any]]:
    """The learning loop's labels (turnout.ledger.labels), empty where the table does not exist yet."""
    if args.dsn:
        import psycopg

        from turnout.ledger.labels import PostgresLabels

        try:
            return PostgresLabels(args.dsn, args.schema, migrate=False).rows(since=since)
        except psycopg.Error:
            return []
    from turnout import sqlitedb

    if not Path(args.db).is_file():
        return []
    conn = sqlitedb.read_only(args.db)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'route_labels'").fetchone():
            return []
        cur = conn.execute("SELECT * FROM route_labels" + (" WHERE ts >= ?" if since is not None else ""),
                           (since,) if since is not None else ())
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur]
    finally:
        conn.close()


def store_of(args: argparse.Namespace) -> None:
    """Resolve --db / --dsn: an explicit flag wins, then $TURNOUT_DSN, then $TURNOUT_DB or the default file."""
    if not args.dsn and not args.db:
        args.dsn = os.environ.get("TURNOUT_DSN") or None
    if not args.db:
        args.db = os.environ.get("TURNOUT_DB") or ".turnout/turnout.sqlite"


def run(args: argparse.Namespace) -> int:
    from turnout.ledger.usage import render, summarize

    store_of(args)
    since = time.time() - args.since * 3600 if args.since is not None else None
    if args.dsn:
        from turnout.ledger.postgres import read_feedback, read_rows

        rows = read_rows(args.dsn, since, schema=args.schema)
        feedback = read_feedback(args.dsn, since, schema=args.schema)
    else:
        from turnout.ledger.feedback import read_feedback as read_sqlite_feedback
        from turnout.ledger.sqlite import read_rows as read_sqlite_rows

        if not Path(args.db).is_file():
            raise FileNotFoundError(
                f"{args.db}: no ledger yet (start `turnout serve` and send a request, or pass --db)")
        rows = read_sqlite_rows(args.db, since)
        feedback = read_sqlite_feedback(args.db, since)
    summary = summarize(rows, feedback, _labels(args, since))
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0
