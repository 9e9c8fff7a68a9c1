"""A route's router artifacts over time: every fitted artifact, which one serves, and why.

A registry is one folder per route (``.turnout/routers/<alias>/``)::

    r0001.npz, r0002.npz ...   every artifact fitted for the route, never overwritten
    history.jsonl              one event per line: fitted, promoted, refused, rollback (append-only)
    current.json               {"artifact": "r0002.npz"}: the one that serves (replaced atomically)
    fit.lock                   held while a fit runs (:meth:`Registry.lock`): one fit at a time per route

A route's ``router:`` may name such a folder instead of one ``.npz`` file; the gateway then loads
the artifact ``current.json`` names. ``turnout router history`` lists the events, ``turnout router
rollback`` points ``current.json`` back at the artifact promoted before the current one.

:func:`load_serving` never raises: a missing or broken artifact gives ``None`` and the reason,
and the route falls back to its rules (the chain in order), visibly in the log and the decision.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.routing.learned import LearnedRouter

log = logging.getLogger("turnout.routing")
_NAME = re.compile(r"^r(\d{4,})\.npz$")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Registry:
    """The artifacts of one route, in ``folder``."""

    folder: Path

    @property
    def history_file(self) -> Path:
        return self.folder / "history.jsonl"

    def artifacts(self) -> list[Path]:
        found = [p for p in self.folder.glob("r*.npz") if _NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]

    def next_path(self) -> Path:
        existing = self.artifacts()
        n = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
        return self.folder / f"r{n:04d}.npz"

    def current(self) -> Path | None:
        pointer = self.folder / "current.json"
        if not pointer.is_file():
            return None
        name = str(json.loads(pointer.read_text())["artifact"])
        return self.folder / name

    def _point(self, path: Path) -> None:
        tmp = self.folder / "current.json.tmp"
        tmp.write_text(json.dumps({"artifact": path.name, "since": _now()}))
        os.replace(tmp, self.folder / "current.json")

    def record(self, event: str, artifact: Path | None, **fields: Any) -> dict[str, Any]:
        entry = {"ts": _now(), "event": event, "artifact": artifact.name if artifact else None, **fields}
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.history_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def history(self) -> list[dict[str, Any]]:
        if not self.history_file.is_file():
            return []
        return [json.loads(line) for line in self.history_file.read_text(encoding="utf-8").splitlines() if line]

    def labels_at_last_fit(self) -> int:
        """How many labels the route had when it was last fitted (0 before any fit): ``turnout
        router fit --min-new-labels`` and the gateway's schedule fit again only past it."""
        for e in reversed(self.history()):
            if e.get("event") in ("promoted", "refused") and isinstance(e.get("labels"), int):
                return int(e["labels"])
        return 0

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the route's fit lock (waits for a fit in progress, in this or another process, e.g.
        the retraining schedule of two gateway replicas on one host)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "fit.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, router: LearnedRouter) -> Path:
        """Save a new artifact (not serving yet)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return router.save(self.next_path())

    def promote(self, path: Path, **fields: Any) -> None:
        previous = self.current()
        self._point(path)
        self.record("promoted", path, previous=previous.name if previous else None, **fields)

    def rollback(self) -> Path:
        """Serve the artifact that served before the current one; ValueError when there is none."""
        current = self.current()
        promoted = [e for e in self.history() if e["event"] in ("promoted", "rollback")]
        if current is None or not promoted:
            raise ValueError(f"{self.folder}: nothing serves yet, nothing to roll back")
        previous = promoted[-1].get("previous")
        if not previous:
            raise ValueError(f"{self.folder}: {current.name} is the first artifact promoted; nothing to roll back to")
        target = self.folder / str(previous)
        if not target.is_file():
            raise ValueError(f"{self.folder}: the previous artifact {previous} is missing")
        before = self._before(target.name, promoted)
        self._point(target)
        self.record("rollback", target, previous=before, replaced=current.name)
        return target

    @staticmethod
    def _before(name: str, events: list[dict[str, Any]]) -> str | None:
        """What served before ``name`` was last made current (so rollbacks chain backwards)."""
        for e in reversed(events):
            if e.get("artifact") == name:
                previous = e.get("previous")
                return str(previous) if previous else None
        return None


def resolve(path: str | Path) -> Path:
    """The artifact a route's ``router:`` names: the file itself, or a registry folder's current one."""
    p = Path(path)
    if p.is_dir():
        current = Registry(p).current()
        if current is None:
            raise FileNotFoundError(f"{p}: a router registry with no current artifact (run `turnout router fit`)")
        return current
    return p


def load_serving(path: str | Path, warm_up: bool = True) -> tuple[LearnedRouter | None, str | None]:
    """(router, None), or (None, why) when the artifact is missing or broken: the caller routes by
    the route's rules instead and says so. Never raises."""
    try:
        router = LearnedRouter.load(resolve(path))
        if warm_up:
            router.warm_up()
    except Exception as exc:  # noqa: BLE001 - a router never fails a request, nor the start-up
        why = f"router artifact {path} unusable ({type(exc).__name__}: {exc}); routing by the chain's rules"
        log.error(why)
        return None, why
    return router, None
