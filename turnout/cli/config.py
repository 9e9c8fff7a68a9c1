"""`turnout config check FILE`: validate a configuration without starting anything: the
schema, then what it points to (router artifacts load, model files exist and match their
pins, licenses are allowed; ``turnout.preflight``). Exit 1 on any error; warnings (an unset
``api_key_env`` variable) are printed and do not fail the check."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="work with turnout.yaml")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate a configuration file and what it points to")
    c.add_argument("file")
    c.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    import sys

    from turnout.config import load_config
    from turnout.preflight import problems

    cfg = load_config(args.file)
    found = problems(cfg)
    errors = [p for p in found if p.level == "error"]
    for p in found:
        print(f"{args.file}: {p}", file=sys.stderr)
    if errors:
        print(f"{args.file}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    from turnout.capture import check_functions

    fns = {}
    if cfg.functions.path:  # templates, schemas and golden inputs, all checked (turnout.functions.spec)
        from turnout.functions.spec import load_functions

        fns = load_functions(cfg.functions.path, cfg)
    check_functions(cfg, fns)  # capture.functions names functions that exist (ConfigError: exit 2, one line)
    local = cfg.local_engines()
    print(f"{args.file}: ok — {len(cfg.engines)} engine(s) ({len(local)} local), {len(cfg.routes)} route(s), "
          f"{len(cfg.rules)} rule(s)")
    for alias, route in cfg.routes.items():
        print(f"  route {alias}: {' -> '.join(route.chain)}")
    if not local:
        print("  note: no local engine; requests labelled sensitive will be refused")
    for name, fn in fns.items():
        variants = ", ".join(f"{v.name}@{v.template_hash} -> {v.spec.route}" for v in fn.variants.values())
        print(f"  function fn:{name}: {variants}; {len(fn.golden)} golden item(s)")
    return 0
