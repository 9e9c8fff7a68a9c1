"""The ownership loop unattended (``tune.every_s``, ``turnout adapters schedule``; issue 26 item 5).

One round, when ``tune.min_new_examples`` calls of ``tune.function`` were captured since the last
round that trained (``WORKDIR/state.json``):

1. ``turnout dataset build`` of that function's traffic (``tune.tenants``) into ``WORKDIR/<round>/data``;
2. ``turnout tune`` into ``WORKDIR/<round>/adapter`` (built in, or ``trainer: command``), evaluated
   against the base with ``--function`` and signed with ``tune.sign_key`` when set;
3. the adapter registered and gated (``turnout.tune.gate.register``): ``refused`` with an audit entry, or
   ``registered``; with ``tune.canary.auto`` its canary starts at once (the gateway loads it into the canary
   engine at run time), else it waits for ``turnout adapters promote``.

Steps 1 and 2 run as child processes (``python -m turnout ...``), as the router's retrain does: the
training's CPU, memory and any crash stay out of the scheduler. A file lock (``WORKDIR/schedule.lock``)
keeps two schedulers (two replicas, a cron overlap) from running a round at once: the second skips.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE = "state.json"
LOCK = "schedule.lock"


@contextlib.contextmanager
def round_lock(workdir: Path) -> Iterator[bool]:
    """True while this process holds the schedule's lock; False (at once) when another does."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_state(workdir: Path) -> dict[str, Any]:
    path = workdir / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_state(workdir: Path, state: dict[str, Any]) -> None:
    tmp = workdir / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(workdir / STATE)


def _child(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "turnout", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout_s, check=False)


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def run_round(config: Path, cfg: Any, captures: Any, register: Any, start: Any = None) -> dict[str, Any]:
    """One round of the schedule; ``{"result": trained|skipped|failed, "reason": ..., "adapter": ...}``.
    ``captures``: the capture store (counts the new examples); ``register(folder)``: registers and gates;
    ``start(row)`` (``tune.canary.auto``): starts the canary of an adapter that passed the gate."""
    tune = cfg.tune
    assert tune.function is not None
    workdir = Path(tune.workdir)
    with round_lock(workdir) as held:
        if not held:
            return {"result": "skipped", "reason": "another round holds the schedule's lock", "adapter": None}
        state = read_state(workdir)
        since = state.get("last_ts")
        tenants = None if tune.tenants == ["*"] else tune.tenants
        new = len(captures.rows(functions=[tune.function], tenants=tenants, since=since))
        if new < tune.min_new_examples:
            return {"result": "skipped", "reason": f"{new} new captured calls of fn:{tune.function}; "
                    f"{tune.min_new_examples} needed (tune.min_new_examples)", "adapter": None}
        started = time.time()
        name = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        folder = workdir / name
        scope = ["--all-tenants"] if tenants is None else [a for t in tenants for a in ("--tenant", t)]
        build = _child(["dataset", "build", "--config", str(config), "--function", tune.function, *scope,
                        "--out", str(folder / "data")], tune.timeout_s)
        if build.returncode != 0:
            return {"result": "failed", "reason": f"dataset build: {_tail(build)}", "adapter": None}
        sign = ["--sign-key", tune.sign_key] if tune.sign_key else []
        trained = _child(["tune", "--config", str(config), "--dataset", str(folder / "data" / "train.jsonl"),
                          "--out", str(folder / "adapter"), "--function", tune.function, *sign, *tune.tune_args],
                         tune.timeout_s)
        write_state(workdir, {**state, "last_ts": started, "last_round": name})  # these examples are used
        if trained.returncode != 0:
            return {"result": "failed", "reason": f"tune: {_tail(trained)}", "adapter": None}
        row = register(folder / "adapter")
        waiting = None
        if start is not None and row.status == "registered":
            try:
                row = start(row)
            except Exception as exc:  # noqa: BLE001 - e.g. another canary of the function: it waits, registered
                waiting = f"{type(exc).__name__}: {exc}"
        if row.status == "refused":
            reason = row.reason
        elif row.status == "canary":
            reason = (f"passed the gate; on canary through {row.engine} on {row.share:.0%} of new episodes (the "
                      "gateway loads it, no restart); the watcher decides")
        else:
            reason = (f"passed the gate; its canary did not start ({waiting}); " if waiting else "passed the gate; ") \
                + f"start it with `turnout adapters promote {row.id}`"
        return {"result": "trained", "status": row.status, "reason": reason, "adapter": row.id,
                "examples": new, "folder": str(folder)}
