"""What a ``learned`` route decides per request: the router's score against the tracked threshold,
or, when the router is missing, broken or fails on this prompt, the route's rules, visibly.

    serving = LearnedServing.from_routes({"auto": (".turnout/routers/auto", 0.2, None)})  # start-up
    verdict = await asyncio.to_thread(serving.decide, "auto", prompt_text)
    if verdict.escalate is None: ...   # rules: the chain in order; verdict.reason says why
    elif verdict.escalate: ...         # strong engines first
    serving.refresh("auto")            # a worker thread, every few seconds: a promotion or rollback

A router never fails a request: :meth:`LearnedServing.decide` returns ``escalate=None`` with the
reason instead of raising. The threshold served is :class:`~turnout.routing.threshold.ThresholdTracker`'s
when the route has a target share, else the configured or the artifact's fixed threshold.

**Hot reload.** :meth:`LearnedServing.refresh` looks at what the route's ``router:`` names now
(a registry folder's ``current.json``, or the file itself: its name, size and modification time,
one ``stat`` and one small read) and, when it changed, loads and warms up the new artifact and
swaps it in (one dictionary assignment: a request scores with the old router or the new one,
never a mix). A new artifact that does not load keeps the old one serving, and every decision's
reason says so until a loadable one appears (``status`` shows it too). Each verdict names the
artifact that scored it (:func:`artifact_id`: file name and the first 8 hex digits of its sha256).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.routing.artifacts import load_serving, resolve
from turnout.routing.learned import LearnedRouter
from turnout.routing.threshold import ThresholdTracker

log = logging.getLogger("turnout.routing")
Signature = tuple[str, int, int]  # the artifact's resolved path, mtime (ns) and size


@dataclass(frozen=True)
class ServingVerdict:
    escalate: bool | None   # None: no usable router, route by the rules
    score: float | None
    threshold: float | None
    reason: str
    artifact: str | None = None  # the artifact that scored (artifact_id), None without one


def artifact_id(path: Path) -> str:
    """``r0002.npz@1a2b3c4d``: the file's name and the start of its content's sha256, so two
    artifacts with the same name (a file overwritten in place) are told apart."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name}@{digest.hexdigest()[:8]}"


def _signature(source: str | Path) -> Signature:
    path = resolve(source)
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


class LearnedServing:
    """Per route: the loaded router (or why there is none), a fixed threshold or a tracked share."""

    def __init__(self, routers: Mapping[str, LearnedRouter | None], problems: Mapping[str, str] | None = None,
                 targets: Mapping[str, float] | None = None, thresholds: Mapping[str, float | None] | None = None,
                 tracker: ThresholdTracker | None = None, sources: Mapping[str, str | Path] | None = None,
                 ids: Mapping[str, str] | None = None, warm_up: bool = True) -> None:
        self.routers = dict(routers)
        self.problems = dict(problems or {})
        self.thresholds = dict(thresholds or {})
        self.targets = dict(targets or {})
        self.tracker = tracker or ThresholdTracker()
        self.sources = dict(sources or {})   # alias -> what its router: names (refresh reads it again)
        self.ids = dict(ids or {})           # alias -> artifact_id of the router serving
        # what decide reads: (router, its id), replaced in one assignment, so a request never
        # pairs the old router with the new id
        self._serving = {a: (r, self.ids.get(a)) for a, r in self.routers.items() if r is not None}
        self.stale: dict[str, tuple[str, str]] = {}  # alias -> (why a newer artifact is not served, its public form)
        self.loaded: dict[str, Signature | None] = {}  # alias -> what serves, as last seen on disk
        self.failed: dict[str, object] = {}  # alias -> the signature (or error text) that failed: not retried
        self.warm_up = warm_up
        self._refreshing = threading.Lock()
        for alias, source in self.sources.items():
            try:
                sig: Signature | None = _signature(source)
            except Exception:  # noqa: BLE001 - already a problem of the route (load_serving said why)
                sig = None
            self.loaded[alias] = sig if self.routers.get(alias) is not None else None
            if self.routers.get(alias) is None and sig is not None:
                self.failed[alias] = sig  # the broken artifact of the start: retried only once it changes
        for alias, target in self.targets.items():
            router = self.routers.get(alias)
            if router is not None:
                self.tracker.configure(alias, target, self._fixed(alias, router))

    @classmethod
    def from_routes(cls, routes: Mapping[str, tuple[str | Path, float | None, float | None]],
                    warm_up: bool = True) -> LearnedServing:
        """``routes``: alias -> (artifact file or registry folder, target share or None, fixed threshold or None)."""
        routers: dict[str, LearnedRouter | None] = {}
        problems: dict[str, str] = {}
        ids: dict[str, str] = {}
        for alias, (path, _, _) in routes.items():
            routers[alias], why = load_serving(path, warm_up)
            if why:
                problems[alias] = why
            else:
                ids[alias] = artifact_id(resolve(path))
        return cls(routers, problems, {a: t for a, (_, t, _) in routes.items() if t is not None},
                   {a: th for a, (_, _, th) in routes.items()}, sources={a: p for a, (p, _, _) in routes.items()},
                   ids=ids, warm_up=warm_up)

    def _fixed(self, alias: str, router: LearnedRouter) -> float:
        configured = self.thresholds.get(alias)
        return configured if configured is not None else router.threshold

    def artifact_threshold(self, alias: str) -> float | None:
        """The fixed threshold (configured, else the artifact's) of the router serving ``alias``."""
        router = self.routers.get(alias)
        return None if router is None else self._fixed(alias, router)

    def decide(self, alias: str, prompt: str) -> ServingVerdict:
        router, artifact = self._serving.get(alias, (None, None))
        if router is None:
            return ServingVerdict(None, None, None, self.problems.get(alias, f"no router for route {alias!r}")
                                  + "; routed by the chain's rules")
        stale = self.stale.get(alias)
        note = f"; {stale[0]}" if stale else ""
        try:
            score = router.score(prompt)
        except Exception as exc:  # noqa: BLE001 - a router never fails a request
            log.error("learned router of route %s failed on a prompt: %s", alias, exc)
            return ServingVerdict(None, None, None, f"learned router failed ({type(exc).__name__}: {exc}); "
                                  f"routed by the chain's rules{note}", artifact)
        threshold = self.tracker.threshold(alias, default=self._fixed(alias, router))
        self.tracker.observe(alias, score)
        escalate = score >= threshold
        word = ">=" if escalate else "<"
        tracked = " (tracked)" if self.tracker.tracks(alias) else ""
        named = f" {artifact}" if artifact else ""
        return ServingVerdict(escalate, score, threshold,
                              f"learned router{named}: {score:.3f} {word} {threshold:.3f}{tracked}, "
                              f"{'strong' if escalate else 'weak'} engine{note}", artifact)

    def replace(self, alias: str, router: LearnedRouter, target: float | None = None,
                seed_scores: list[float] | None = None, artifact: str | None = None) -> None:
        """Serve a newly promoted artifact (a reload or the retraining schedule); ``seed_scores``:
        its scores of recent requests, so the tracked threshold fits it from the first request."""
        if target is not None:
            self.tracker.configure(alias, target, self._fixed(alias, router), seed_scores)
        if artifact is None:
            self.ids.pop(alias, None)  # a router handed in (a test, the replay): no file to name
        else:
            self.ids[alias] = artifact
        self.routers[alias] = router
        self._serving[alias] = (router, artifact)
        self.problems.pop(alias, None)
        self.stale.pop(alias, None)

    def refresh(self, alias: str) -> str | None:
        """Serve what the route's ``router:`` names now, if it changed since it was loaded (blocking:
        run it in a worker thread). Returns what happened, for the log, or None when nothing did."""
        source = self.sources.get(alias)
        if source is None:
            return None
        with self._refreshing:
            return self._refresh(alias, source)

    def _refresh(self, alias: str, source: str | Path) -> str | None:
        serving = self.ids.get(alias) if self.routers.get(alias) is not None else None
        try:
            sig: Signature = _signature(source)
        except Exception as exc:  # noqa: BLE001 - a pointer to nothing is a finding, never a crash
            failure = f"{type(exc).__name__}: {exc}"
            if self.failed.get(alias) == failure:
                return None
            self.failed[alias] = failure
            return self._broken(alias, str(source), exc, serving)
        if sig == self.loaded.get(alias) or sig == self.failed.get(alias):
            return None
        path = Path(sig[0])
        try:
            router = LearnedRouter.load(path)
            if self.warm_up:
                router.warm_up()
            new_id = artifact_id(path)
        except Exception as exc:  # noqa: BLE001 - a broken new artifact keeps the old one serving
            self.failed[alias] = sig
            return self._broken(alias, path.name, exc, serving)
        self.replace(alias, router, self.targets.get(alias), artifact=new_id)
        self.loaded[alias] = sig
        self.failed.pop(alias, None)
        return f"route {alias}: now serving {new_id}" + (f" (was {serving})" if serving else "")

    def _broken(self, alias: str, name: str, exc: Exception, serving: str | None) -> str:
        why = f"router artifact {name} unusable ({type(exc).__name__}: {exc})"
        if serving is not None:
            self.stale[alias] = (f"{why}; still serving {serving}",
                                 f"{Path(name).name} unusable ({type(exc).__name__}); still serving {serving}")
            return f"route {alias}: {self.stale[alias][0]}"
        self.problems[alias] = f"{why}; routing by the chain's rules"
        return f"route {alias}: {self.problems[alias]}"

    def status(self, alias: str) -> dict[str, Any]:
        """For ``/readyz``: the artifact serving, and whether a newer one could not be loaded
        (file names and error types only: the endpoint is public; the log has the rest)."""
        if self.routers.get(alias) is None:
            return {"artifact": None, "ok": False, "detail": "no usable router artifact; routed by the chain's rules"}
        stale = self.stale.get(alias)
        return {"artifact": self.ids.get(alias), "ok": stale is None, "detail": stale[1] if stale else None}
