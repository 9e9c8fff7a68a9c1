"""`turnout keys create|list|revoke`: API keys, their tenants, routes, limits and budgets.

    turnout keys create --tenant acme [--routes fast,smart] [--rpm 60] [--tpm 100000] \
                        [--usd-day 5] [--usd-month 100]     prints the key ONCE
    turnout keys list [--tenant T] [--active] [--json]
    turnout keys revoke KEY_ID

The SQLite file defaults to $TURNOUT_DB or .turnout/turnout.sqlite (``--db`` overrides).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", help="SQLite file (default $TURNOUT_DB or .turnout/turnout.sqlite)")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    c = ksub.add_parser("create", help="create a key; the plaintext is shown once")
    c.add_argument("--tenant", required=True)
    c.add_argument("--routes", default="", help="comma-separated route aliases this key may use (default: all)")
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


def _store(args: argparse.Namespace) -> Any:
    from turnout.governance.keys import KeyStore

    return KeyStore(args.db)


def _key_dict(key: Any) -> dict[str, Any]:
    d = asdict(key)
    d["routes"] = list(key.routes)
    d["active"] = key.active
    return d


def create(args: argparse.Namespace) -> int:
    from turnout.governance.keys import Limits

    try:
        limits = Limits(rpm=args.rpm, tpm=args.tpm, usd_per_day=args.usd_day, usd_per_month=args.usd_month)
        with _store(args) as store:
            new = store.create(args.tenant, routes=args.routes.split(","), limits=limits)
    except ValueError as exc:
        print(f"turnout keys: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"key": new.plaintext, **_key_dict(new.key)}))
    else:
        print(f"created {new.key.key_id} for tenant {new.key.tenant}")
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
    print(f"{'KEY_ID':<21} {'TENANT':<16} {'HINT':<10} {'ROUTES':<16} {'RPM':>7} {'TPM':>9} "
          f"{'USD/DAY':>8} {'USD/MON':>8}  STATUS")
    for k in keys:
        lim = k.limits
        status = "active" if k.active else f"revoked {k.revoked_at}"
        print(f"{k.key_id:<21} {k.tenant:<16} {k.hint:<10} {','.join(k.routes) or '*':<16} {_limit(lim.rpm):>7} "
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
