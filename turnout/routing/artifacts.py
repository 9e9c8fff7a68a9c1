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

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from turnout.artifact_registry import ArtifactRegistry
from turnout.routing.learned import LearnedRouter

log = logging.getLogger("turnout.routing")


@dataclass
class Registry(ArtifactRegistry):
    """The artifacts of one route, in ``folder`` (``r0001.npz``, ...)."""

    prefix: ClassVar[str] = "r"
    suffix: ClassVar[str] = ".npz"

    def labels_at_last_fit(self) -> int:
        """How many labels the route had when it was last fitted (0 before any fit): ``turnout
        router fit --min-new-labels`` and the gateway's schedule fit again only past it."""
        for e in reversed(self.history()):
            if e.get("event") in ("promoted", "refused") and isinstance(e.get("labels"), int):
                return int(e["labels"])
        return 0

    def add(self, router: LearnedRouter) -> Path:
        """Save a new artifact (not serving yet)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return router.save(self.next_path())

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
        before = self.previous_of(target.name)
        self._point(target)
        self.record("rollback", target, previous=before, replaced=current.name)
        return target


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
