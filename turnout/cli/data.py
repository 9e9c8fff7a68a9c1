"""`turnout data forget|purge`: erase captured traffic (docs/ownership.md, "Capture").

    turnout data forget --tenant T [--request ID] [--by NAME] [--config F | --db PATH | --dsn DSN [--schema S]]
    turnout data forget --request ID ...
                         delete the captured requests (and their answers, and the route labels holding
                         their prompts) of a tenant or of one request, and append an `erasure` entry to
                         the audit chain in the same transaction; `turnout audit verify` still passes
                         (ledger rows hold no request text and stay). Exit 0, or 2 on bad arguments.
    turnout data purge  [store args]        delete captured requests past their retention now
                         (the gateway's ledger writer also does so, at most once a minute)

Operator commands: they need the database itself (the SQLite file, or the PostgreSQL DSN), not an
API key; no HTTP endpoint erases captured data. The store is the one of --config's `storage`, else
--db / --dsn, else $TURNOUT_DSN, else $TURNOUT_DB or .turnout/turnout.sqlite. Datasets already built
(`turnout dataset build`) are files: erasure does not reach them; each line names its request id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def store_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--config", help="turnout.yaml: its storage section names the store")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--db", help="SQLite file (default $TURNOUT_DB or .turnout/turnout.sqlite)")
    g.add_argument("--dsn", help="PostgreSQL DSN (default $TURNOUT_DSN, which keeps a password out of `ps`)")
    q.add_argument("--schema", default=None, help="PostgreSQL schema (default: the config's, else public)")


def open_store(args: argparse.Namespace) -> Any:
    """The capture store the arguments name; ValueError when the SQLite file does not exist
    (reading or erasing must not create an empty database and report success)."""
    from turnout.ledger.capture import open_captures
    from turnout.sqlitedb import default_db_path

    db, dsn, schema = args.db, args.dsn, args.schema
    if args.config and not (db or dsn):
        from turnout.config import load_config

        st = load_config(args.config).storage
        db, dsn, schema = (None, st.postgres_dsn, schema or st.postgres_schema) if st.postgres_dsn else \
            (st.sqlite_path, None, schema)
    if not dsn and not db:
        dsn = os.environ.get("TURNOUT_DSN") or None
    if not dsn:
        path = Path(db) if db else default_db_path()
        if not path.exists():
            raise ValueError(f"no database at {path} (set --config, --db, $TURNOUT_DB or --dsn)")
        return open_captures(db=path)
    return open_captures(dsn=dsn, schema=schema or "public")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("data", help="erase captured traffic (forget a tenant or a request, purge expired)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    f = dsub.add_parser("forget", help="erase a tenant's or one request's captured data; recorded in the audit chain")
    f.add_argument("--tenant", help="every captured request of this tenant")
    f.add_argument("--request", help="one request id (with --tenant: only if it is that tenant's)")
    f.add_argument("--by", default=os.environ.get("USER") or "operator",
                   help="who asked, for the audit entry (default $USER)")
    f.add_argument("--json", action="store_true")
    store_args(f)
    f.set_defaults(func=forget)
    u = dsub.add_parser("purge", help="delete captured requests past their retention now")
    u.add_argument("--json", action="store_true")
    store_args(u)
    u.set_defaults(func=purge)


def _fail(message: str) -> int:
    print(f"turnout data: error: {message}", file=sys.stderr)
    return 2


def forget(args: argparse.Namespace) -> int:
    if not args.tenant and not args.request:
        return _fail("say what to forget: --tenant T, --request ID, or both")
    for what, value in (("--tenant", args.tenant), ("--request", args.request)):
        if value is not None and not value.strip():
            return _fail(f"{what} is empty")
    try:
        store = open_store(args)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        erased = store.forget(tenant=args.tenant, request_id=args.request, by=args.by)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"captures": erased.captures, "answers": erased.answers, "labels": erased.labels,
                          "audit_seq": erased.audit_seq}))
    else:
        print(erased)
    return 0


def purge(args: argparse.Namespace) -> int:
    try:
        store = open_store(args)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        n = store.purge_expired()
    finally:
        store.close()
    print(json.dumps({"purged": n}) if args.json else f"purged {n} expired captured request(s)")
    return 0
