"""`turnout eval router|cascade|guards|golden`: offline evaluation and regression gates. Each evaluation lives in
``turnout.evals`` and registers its own sub-command."""

from __future__ import annotations

import argparse
import importlib

EVALS = ["turnout.evals.router_cli", "turnout.evals.cascade_cli", "turnout.evals.guards_cli",
         "turnout.evals.golden_cli", "turnout.cli.function_eval"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="evaluate routers, cascades and guards on labelled data")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    for name in EVALS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(esub)
