"""`turnout keys create|list|revoke|rotate`: API keys, their tenants, roles, routes, limits,
budgets and expiry.

    turnout keys [--config turnout.yaml] create --tenant acme [--roles user,viewer] [--routes fast,smart]
                 [--rpm 60] [--tpm 100000] [--usd-day 5] [--usd-month 100] [--expires 90d]
                 [--owner alice@acme.example] [--tenant-only]                        prints the key ONCE
    turnout keys list [--tenant T] [--active] [--json]
    turnout keys revoke KEY_ID
    turnout keys rotate KEY_ID [--overlap 1h]       a new secret; the old one works for the overlap
    turnout keys --config scaled.yaml import OLD.sqlite   copy a SQLite file's keys into the config's store

Roles: admin, viewer (dashboard, usage and metrics of its tenant), approver (decides its tenant's
task approvals), user (inference, its feedback and collections; the default), metrics (GET
/metrics of every tenant, nothing else: for Prometheus). An admin key made here is the
operator's: it manages every tenant's keys and reads every tenant's usage and the configuration
(``all_tenants``); with --tenant-only it administers its own tenant only, like an admin key made
through the API. --owner names the person a key belongs to: an approver never approves a task
started by a key of the same owner (four eyes), whichever key each used.
The store is the configuration's (``--config``, default $TURNOUT_CONFIG): PostgreSQL when
``storage.postgres_dsn`` is set (or ``--dsn`` [``--schema``]), else its SQLite file; without a
configuration, $TURNOUT_DB or .turnout/turnout.sqlite (``--db`` overrides the SQLite file either way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default=os.environ.get("TURNOUT_CONFIG"),
                   help="turnout.yaml: use its key store (PostgreSQL when storage.postgres_dsn is set)")
    p.add_argument("--db", help="SQLite file (default: the config's, else $TURNOUT_DB or .turnout/turnout.sqlite)")
    p.add_argument("--dsn", help="PostgreSQL key store (overrides the config's storage.postgres_dsn)")
    p.add_argument("--schema", help="PostgreSQL schema (default: the config's storage.postgres_schema, else public)")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    c = ksub.add_parser("create", help="create a key; the plaintext is shown once")
    c.add_argument("--tenant", required=True)
    c.add_argument("--roles", default="user",
                   help="comma-separated: admin, viewer, approver, user, metrics (default: user)")
    c.add_argument("--owner", help="the person the key belongs to (four eyes compares owners)")
    c.add_argument("--tenant-only", action="store_true",
                   help="an admin key of its tenant only (default for admin here: every tenant, the operator's)")
    c.add_argument("--routes", default="", help="comma-separated route aliases this key may use (default: all)")
    c.add_argument("--expires", help="when the key stops working: a duration (30d, 12h) or an ISO 8601 time")
    c.add_argument("--rpm", type=int, help="requests per minute")
    c.add_argument("--tpm", type=int, help="tokens per minute")
    c.add_argument("--usd-day", type=float, help="USD budget per UTC day")
    c.add_argument("--usd-month", type=float, help="USD budget per UTC month")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=create)

    ls = ksub.add_parser("list", help="list keys (never their plaintext)")
    ls.add_argument("--tenant")
    ls.add_argument("--active", action="store_true", help="leave out revoked keys")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_keys)

    r = ksub.add_parser("revoke", help="revoke a key at once")
    r.add_argument("key_id")
    r.set_defaults(func=revoke)

    ro = ksub.add_parser("rotate", help="a new secret for the same key; the old secret works for --overlap more")
    ro.add_argument("key_id")
    ro.add_argument("--overlap", default="1h",
                    help="how long the old secret keeps working: 0s, 15m, 1h, 7d (default 1h)")
    ro.add_argument("--json", action="store_true")
    ro.set_defaults(func=rotate)

    im = ksub.add_parser("import", help="copy the keys (hashes) of a SQLite file into this store, e.g. PostgreSQL")
    im.add_argument("source", help="the SQLite file whose keys to copy")
    im.set_defaults(func=import_keys)


def _store(args: argparse.Namespace) -> Any:
    from turnout.config import StorageConfig, load_config
    from turnout.governance.key_store import SQLiteKeyStore, open_key_store

    if not (args.config or args.dsn):
        return SQLiteKeyStore(args.db)
    storage = load_config(args.config).storage if args.config else StorageConfig.model_validate({})
    if args.db:
        storage.sqlite_path = args.db
    if args.dsn:
        storage.postgres_dsn = args.dsn
    if args.schema:
        storage.postgres_schema = args.schema
    return open_key_store(storage)


def _key_dict(key: Any) -> dict[str, Any]:
    d = asdict(key)
    d["routes"] = list(key.routes)
    d["roles"] = list(key.roles)
    d["active"] = key.active
    return d


def create(args: argparse.Namespace) -> int:
    from turnout.governance.keys import Limits, parse_expiry

    try:
        limits = Limits(rpm=args.rpm, tpm=args.tpm, usd_per_day=args.usd_day, usd_per_month=args.usd_month)
        expires = parse_expiry(args.expires) if args.expires else None
        with _store(args) as store:
            roles = args.roles.split(",")
            new = store.create(args.tenant, routes=args.routes.split(","), limits=limits, roles=roles,
                               expires_at=expires, owner=args.owner,
                               all_tenants="admin" in {r.strip() for r in roles} and not args.tenant_only)
    except ValueError as exc:
        print(f"turnout keys: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"key": new.plaintext, **_key_dict(new.key)}))
    else:
        every = " (all tenants)" if new.key.all_tenants else ""
        print(f"created {new.key.key_id} for tenant {new.key.tenant}{every}, roles {','.join(new.key.roles)}")
        print(f"key (shown once, store it now): {new.plaintext}")
    return 0


def _limit(v: Any, money: bool = False) -> str:
    return "-" if v is None else (f"${v:g}" if money else f"{v:,}")


def list_keys(args: argparse.Namespace) -> int:
    with _store(args) as store:
        keys = store.list(tenant=args.tenant, include_revoked=not args.active)
    if args.json:
        print(json.dumps([_key_dict(k) for k in keys], indent=2))
        return 0
    print(f"{'KEY_ID':<21} {'TENANT':<16} {'ROLES':<14} {'OWNER':<16} {'HINT':<10} {'ROUTES':<16} "
          f"{'RPM':>7} {'TPM':>9} {'USD/DAY':>8} {'USD/MON':>8}  STATUS")
    for k in keys:
        lim = k.limits
        status = f"revoked {k.revoked_at}" if not k.active else f"expired {k.expires_at}" if k.expired() else \
            "active" + (f" until {k.expires_at}" if k.expires_at else "")
        tenant = k.tenant + (" (all)" if k.all_tenants else "")  # an all-tenants admin key: every tenant
        print(f"{k.key_id:<21} {tenant:<16} {','.join(k.roles):<14} {k.owner or '-':<16} {k.hint:<10} "
              f"{','.join(k.routes) or '*':<16} {_limit(lim.rpm):>7} "
              f"{_limit(lim.tpm):>9} {_limit(lim.usd_per_day, True):>8} {_limit(lim.usd_per_month, True):>8}  "
              f"{status}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    from turnout.errors import NotFound

    try:
        with _store(args) as store:
            key = store.revoke(args.key_id)
    except NotFound as exc:
        print(f"turnout keys: error: {exc.message}", file=sys.stderr)
        return 1
    print(f"revoked {key.key_id} (tenant {key.tenant}) at {key.revoked_at}")
    return 0


def rotate(args: argparse.Namespace) -> int:
    from turnout.errors import TurnoutError
    from turnout.governance.keys import parse_expiry

    try:
        now = parse_expiry("0s")
        overlap = (parse_expiry(args.overlap, now) - now).total_seconds()
        with _store(args) as store:
            new = store.rotate(args.key_id, overlap_s=overlap)
    except ValueError as exc:
        print(f"turnout keys: error: {exc}", file=sys.stderr)
        return 2
    except TurnoutError as exc:
        print(f"turnout keys: error: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"key": new.plaintext, **_key_dict(new.key)}))
    else:
        print(f"rotated {new.key.key_id} (tenant {new.key.tenant}); the old secret works for {args.overlap} more")
        print(f"new key (shown once, store it now): {new.plaintext}")
    return 0


def import_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from turnout.governance.key_store import SQLiteKeyStore

    if not Path(args.source).is_file():
        print(f"turnout keys: error: {args.source}: no such file", file=sys.stderr)
        return 2
    with SQLiteKeyStore(args.source) as source, _store(args) as store:
        copied = store.copy_from(source)
    print(f"copied {copied} key(s) from {args.source}")
    return 0
