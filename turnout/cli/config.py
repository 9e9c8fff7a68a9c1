"""`turnout config check FILE`: validate a configuration without starting anything."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="work with turnout.yaml")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate a configuration file")
    c.add_argument("file")
    c.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    from turnout.config import load_config

    cfg = load_config(args.file)
    local = cfg.local_engines()
    print(f"{args.file}: ok — {len(cfg.engines)} engine(s) ({len(local)} local), {len(cfg.routes)} route(s), {len(cfg.rules)} rule(s)")
    for alias, route in cfg.routes.items():
        print(f"  route {alias}: {' -> '.join(route.chain)}")
    if not local:
        print("  note: no local engine; requests labelled sensitive will be refused")
    return 0
