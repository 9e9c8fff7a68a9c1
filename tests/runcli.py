"""The ``turnout`` command line, called in-process through ``turnout.cli.main.main(argv)``.

A ``python -m turnout`` subprocess costs an interpreter start and the CLI's imports (seconds on a
loaded 2-core machine) and proves nothing a call of ``main`` does not, unless the process boundary
is the point (kill -9, signals, ``serve``, what a fresh interpreter does at start): those tests keep
their subprocess. ``run_cli`` gives the same result shape as ``subprocess.run(..., text=True)``.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from turnout.cli.main import main


@contextlib.contextmanager
def _environ(env: dict[str, str] | None) -> Iterator[None]:
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_cli(*args: str, cwd: str | Path | None = None, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """``turnout ARGS`` in this process: exit status, stdout and stderr as a CompletedProcess.

    ``env``, when given, is the whole environment (as for subprocess.run), restored afterwards;
    ``cwd`` likewise. An argparse error (SystemExit) gives its status, as the process would.
    ``check`` raises CalledProcessError on a non-zero status, as subprocess.run's does."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environ(env))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=err)
    done = subprocess.CompletedProcess(["turnout", *args], code, out.getvalue(), err.getvalue())
    if check:
        done.check_returncode()
    return done
