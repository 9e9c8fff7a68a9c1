"""`turnout` command line. Each command group is one module with ``register(subparsers)``;
heavy imports happen inside the command, never at registration."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["serve", "chat", "usage", "config", "eval", "cost", "keys", "audit", "models", "functions", "router",
            "tasks", "guards", "data", "dataset", "tune", "adapters"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` the one command group a command line names: registering
    every group imports every group's module (the evaluations pull in numpy and friends), which
    cost each `turnout serve` a third of its start."""
    parser = argparse.ArgumentParser(prog="turnout", description="A hybrid LLM gateway.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [only] if only in COMMANDS else COMMANDS:
        try:
            module = importlib.import_module(f"turnout.cli.{name}")
        except ModuleNotFoundError as exc:  # a command group still being built
            if exc.name != f"turnout.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit:
        raise
    except Exception as exc:  # a clear one-line error, not a traceback, for expected failures
        from turnout.config import ConfigError
        from turnout.errors import TurnoutError

        if isinstance(exc, TurnoutError):
            print(f"turnout: error: {exc.message}", file=sys.stderr)
            return 1
        if isinstance(exc, (ConfigError, FileNotFoundError, ValueError)):
            print(f"turnout: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
