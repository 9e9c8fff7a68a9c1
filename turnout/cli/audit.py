"""`turnout audit verify|head|tail`: check and read the hash-chained audit log.

    turnout audit verify [--expect-head FILE|SEQ:HASH] [--db PATH | --dsn DSN [--schema S]]
                         exit 0 intact, 1 broken (first bad entry named, every ledger or feedback row
                         edited, deleted or inserted, a table or the head row missing, an empty log
                         where rows exist, or a chain that no longer reaches the saved head), 2 no log
    turnout audit head [--json] [--db PATH | --dsn DSN]   verify, then print the head (SEQ:HASH) to keep
                                                          where the database's writers cannot change it
    turnout audit tail [-n N] [--json] [--db PATH | --dsn DSN]

A chain proves only that it is self-consistent: entries cut from the end with the head row
rewound to match (or the whole log wiped) leave a consistent chain. Save the head from time to
time (`turnout audit head > /elsewhere/head-$(date +%F)`), and verify against the last one saved:
`--expect-head` fails when the chain is shorter than it or has another hash at its entry.

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from turnout.ledger.audit import Verification


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
    v.add_argument("--expect-head", metavar="FILE_OR_VALUE",
                   help="a head saved earlier (SEQ:HASH from `turnout audit head`, or a file holding it): "
                        "the chain must still reach that entry with that hash")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=verify)

    h = asub.add_parser("head", help="verify, then print the head (SEQ:HASH) to save elsewhere")
    store_args(h)
    h.add_argument("--json", action="store_true", help='{"seq", "hash", "time"}')
    h.set_defaults(func=head)

    t = asub.add_parser("tail", help="print the last entries")
    store_args(t)
    t.add_argument("-n", type=int, default=10, help="how many entries (default 10)")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.set_defaults(func=tail)


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from turnout.ledger.audit_store import open_audit_log
    from turnout.sqlitedb import default_db_path

    if not args.dsn and not args.db:  # an explicit --db wins over $TURNOUT_DSN
        args.dsn = os.environ.get("TURNOUT_DSN") or None
    if not args.dsn:
        path = Path(args.db) if args.db else default_db_path()
        if not path.exists():  # reading must not create an empty log and call it intact
            raise ValueError(f"no database at {path} (set --db, $TURNOUT_DB or --dsn)")
    # read the log as it is: a dropped table is reported, never re-created empty
    return open_audit_log(db=args.db, dsn=args.dsn, schema=args.schema, migrate=False)


def _db_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def _saved_head(value: str) -> tuple[int, str]:
    from turnout.ledger.audit import parse_head

    path = Path(value)
    if ":" not in value or path.is_file():
        if not path.is_file():
            raise ValueError(f"--expect-head {value!r} is neither SEQ:HASH nor a file")
        value = path.read_text(encoding="utf-8")
    return parse_head(value)


def _verify(args: argparse.Namespace, expect: tuple[int, str] | None = None) -> tuple[Verification | None, int]:
    """(the verification, 0), or (None, exit code) after printing the error."""
    from turnout.ledger.audit import NoAuditLog

    try:
        log = _open(args)
        with log:
            return log.verify(expect), 0
    except (ValueError, NoAuditLog) as exc:
        print(f"turnout audit: error: {exc}", file=sys.stderr)
        return None, 2
    except _db_errors() as exc:
        print(f"turnout audit: error: the database could not be read: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None, 2


def verify(args: argparse.Namespace) -> int:
    expect = None
    if args.expect_head:
        try:
            expect = _saved_head(args.expect_head)
        except (ValueError, OSError) as exc:
            print(f"turnout audit: error: {exc}", file=sys.stderr)
            return 2
    result, code = _verify(args, expect)
    if result is None:
        return code
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(result, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def head(args: argparse.Namespace) -> int:
    result, code = _verify(args)
    if result is None:
        return code
    if not result.ok:  # a head of a broken chain is worth nothing as an anchor
        print(f"turnout audit: not printing a head: {result}", file=sys.stderr)
        return 1
    from turnout.ledger.audit import utc_now

    value = f"{result.entries}:{result.head_hash}"
    print(json.dumps({"seq": result.entries, "hash": result.head_hash, "time": utc_now()}) if args.json else value)
    return 0


def tail(args: argparse.Namespace) -> int:
    if args.n < 0:
        print("turnout audit: error: -n must be >= 0", file=sys.stderr)
        return 2
    try:
        log = _open(args)
        with log:
            records = log.tail(args.n)
    except ValueError as exc:
        print(f"turnout audit: error: {exc}", file=sys.stderr)
        return 2
    except _db_errors() as exc:
        print(f"turnout audit: error: the database could not be read: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
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
