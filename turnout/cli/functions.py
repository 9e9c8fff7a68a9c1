"""`turnout functions report|diff`: a function's figures from the ledger, and what changed
between two variants or two git revisions of its templates."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from turnout.config import TurnoutConfig
    from turnout.functions.spec import Function


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("functions", help="prompt functions (fn:NAME): reports and diffs")
    fsub = p.add_subparsers(dest="functions_command", required=True, metavar="ACTION")
    r = fsub.add_parser("report", help="per variant: calls, feedback with interval, cost, latency, escalation rate")
    r.add_argument("name")
    r.add_argument("--config", default=None, help="turnout.yaml (functions.path, storage)")
    r.add_argument("--db", default=None, help="the SQLite ledger (default: storage.sqlite_path)")
    r.add_argument("--tenant", default=None, help="one tenant's calls (default: all)")
    r.add_argument("--hours", type=float, default=None, help="only the last N hours")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=report)
    d = fsub.add_parser("diff", help="what changed between two variants, or two git revisions of one variant")
    d.add_argument("name")
    d.add_argument("a", help="a variant name, or a git revision (e.g. HEAD~1)")
    d.add_argument("b", help="a variant name, or a git revision (e.g. HEAD or WORKTREE)")
    d.add_argument("--variant", default=None, help="with two revisions: the variant to compare (default: each)")
    d.add_argument("--config", default=None)
    d.set_defaults(func=diff)


def _function(config: str | None, name: str) -> tuple[TurnoutConfig, Function]:
    from turnout.config import load_config
    from turnout.functions.checks import FunctionError
    from turnout.functions.spec import load_functions

    cfg = load_config(config)
    if not cfg.functions.path:
        raise FunctionError(f"{config or 'the default configuration'}: functions.path is not set")
    fns = load_functions(cfg.functions.path, cfg)
    if name not in fns:
        raise FunctionError(f"no function {name!r} in {cfg.functions.path} ({', '.join(sorted(fns)) or 'none'})")
    return cfg, fns[name]


def report(args: argparse.Namespace) -> int:
    from turnout.functions import stats

    cfg, fn = _function(args.config, args.name)
    query = stats.ledger_query(cfg, args.db)
    since = time.time() - args.hours * 3600 if args.hours else None
    rep = stats.with_allocation(stats.report(query, fn, args.tenant, since), fn, query, args.tenant)
    print(json.dumps(rep, indent=2) if args.json else stats.format_report(rep))
    return 0


def diff(args: argparse.Namespace) -> int:
    from turnout.functions import versions

    _, fn = _function(args.config, args.name)
    text = versions.diff(fn, args.a, args.b, args.variant)
    print(text or "no difference")
    return 0
