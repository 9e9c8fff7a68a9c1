"""`turnout audit verify|tail`: check and read the hash-chained audit log.

    turnout audit verify [--db PATH | --dsn DSN [--schema S]]   exit 0 intact, 1 broken (first bad entry named,
                                                                 and every ledger row edited, deleted or inserted)
    turnout audit tail [-n N] [--json] [--db PATH | --dsn DSN]

The SQLite file defaults to $TURNOUT_DB or .turnout/turnout.sqlite; the PostgreSQL DSN to $TURNOUT_DSN
(a password on the command line is visible to every user of the host in `ps`). --db wins over $TURNOUT_DSN.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="verify and read the hash-chained audit log", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    def store_args(q: argparse.ArgumentParser) -> None:
        g = q.add_mutually_exclusive_group()
        g.add_argument("--db", help="SQLite file (default $TURNOUT_DB or .turnout/turnout.sqlite)")
        g.add_argument("--dsn", help="PostgreSQL DSN, e.g. postgresql://postgres@127.0.0.1:5432/turnout "
                                     "(default $TURNOUT_DSN, which keeps a password out of `ps`)")
        q.add_argument("--schema", default="public", help="PostgreSQL schema of the audit tables (default public)")

    v = asub.add_parser("verify", help="walk the chain and the ledger rows it commits to; exit 1 naming what is wrong")
    store_args(v)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=verify)

    t = asub.add_parser("tail", help="print the last entries")
    store_args(t)
    t.add_argument("-n", type=int, default=10, help="how many entries (default 10)")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.set_defaults(func=tail)


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from turnout.ledger.audit import open_audit_log
    from turnout.sqlitedb import default_db_path

    if not args.dsn and not args.db:  # an explicit --db wins over $TURNOUT_DSN
        args.dsn = os.environ.get("TURNOUT_DSN") or None
    if not args.dsn:
        path = Path(args.db) if args.db else default_db_path()
        if not path.exists():  # reading must not create an empty log and call it intact
            raise ValueError(f"no database at {path} (set --db, $TURNOUT_DB or --dsn)")
    return open_audit_log(db=args.db, dsn=args.dsn, schema=args.schema)


def verify(args: argparse.Namespace) -> int:
    try:
        log = _open(args)
    except ValueError as exc:
        print(f"turnout audit: error: {exc}", file=sys.stderr)
        return 2
    with log:
        result = log.verify()
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(result, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def tail(args: argparse.Namespace) -> int:
    if args.n < 0:
        print("turnout audit: error: -n must be >= 0", file=sys.stderr)
        return 2
    try:
        log = _open(args)
    except ValueError as exc:
        print(f"turnout audit: error: {exc}", file=sys.stderr)
        return 2
    with log:
        records = log.tail(args.n)
    for r in records:
        if args.json:
            print(json.dumps(asdict(r)))
        else:
            p = r.payload
            findings = ",".join(p.get("findings") or []) or "-"
            cost = p.get("cost_usd")
            cost_s = f"${cost:.6f}" if isinstance(cost, (int, float)) else "-"
            print(f"{r.seq:>6}  {r.time}  {p.get('request_id', '-')}  route={p.get('route', '-')} "
                  f"engine={p.get('engine') or '-'} cost={cost_s} findings={findings} "
                  f"reason={p.get('reason', '-')!r}  {r.hash[:12]}")
    return 0
