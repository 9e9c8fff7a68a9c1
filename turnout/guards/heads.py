"""Per-tenant injection heads over time: every refitted head, which one serves, and why.

One folder per tenant under ``guards.learning.heads`` (``.turnout/guards/<tenant>/``), in the
shape of the router registry (``turnout.routing.artifacts``)::

    h0001.json, h0002.json ...   every head fitted for the tenant, never overwritten
    history.jsonl                one event per line: promoted, refused, rollback (append-only)
    current.json                 {"artifact": "h0002.json"}: the head that serves (replaced atomically)
    fit.lock                     held while a fit runs: one fit at a time per tenant

A head file holds the 384 weights, the intercept and both thresholds (``InjectionHead.dumps``);
the n-gram half is always the shipped head's. A tenant without ``current.json`` is scored by the
shipped head. :class:`TenantHeads` is the gateway's lookup: it re-reads a tenant's pointer at most
every ``reload_s`` seconds, so a promotion or a rollback serves without a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.guards.injection import InjectionHead

log = logging.getLogger("turnout.guards")
_NAME = re.compile(r"^h(\d{4,})\.json$")
_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def tenant_folder(root: str | Path, tenant: str) -> Path:
    if not _TENANT.fullmatch(tenant) or tenant in (".", ".."):
        raise ValueError(f"tenant {tenant!r} cannot name a folder (letters, digits, . _ - only)")
    return Path(root) / tenant


def load_head(path: Path, base: InjectionHead) -> InjectionHead:
    """A tenant's head file, with the shipped head's n-gram model."""
    d = json.loads(path.read_text(encoding="utf-8"))
    coef = [float(x) for x in d["coef"]]
    if len(coef) != len(base.coef):
        raise ValueError(f"{path}: {len(coef)} weights; the shipped head has {len(base.coef)}")
    head = InjectionHead(coef, float(d["intercept"]), float(d["block_threshold"]), float(d["flag_threshold"]),
                         dict(d.get("meta", {})), base.ngram_weight)
    head.ngram = base.ngram
    return head


@dataclass
class HeadRegistry:
    folder: Path

    @property
    def history_file(self) -> Path:
        return self.folder / "history.jsonl"

    def artifacts(self) -> list[Path]:
        found = [(int(m.group(1)), p) for p in self.folder.glob("h*.json") if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def current(self) -> Path | None:
        pointer = self.folder / "current.json"
        if not pointer.is_file():
            return None
        return self.folder / str(json.loads(pointer.read_text())["artifact"])

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

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "fit.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, head: InjectionHead) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = self.artifacts()
        n = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
        path = self.folder / f"h{n:04d}.json"
        path.write_text(head.dumps(), encoding="utf-8")
        return path

    def promote(self, path: Path, **fields: Any) -> None:
        previous = self.current()
        self._point(path)
        self.record("promoted", path, previous=previous.name if previous else None, **fields)

    def rollback(self) -> Path | None:
        """Serve what served before the current head: the previous promoted head, or the shipped
        head (None) when the current one was the first. ValueError when nothing serves."""
        current = self.current()
        if current is None:
            raise ValueError(f"{self.folder}: no tenant head serves (the shipped head does); nothing to roll back")
        previous = None
        for e in reversed(self.history()):
            if e.get("artifact") == current.name and e["event"] in ("promoted", "rollback"):
                previous = e.get("previous")
                break
        if not previous:
            (self.folder / "current.json").unlink()
            self.record("rollback", None, replaced=current.name, previous=None)
            return None
        target = self.folder / str(previous)
        if not target.is_file():
            raise ValueError(f"{self.folder}: the previous head {previous} is missing")
        before = None
        for e in reversed(self.history()):
            if e.get("artifact") == target.name and e["event"] in ("promoted", "rollback"):
                before = e.get("previous")
                break
        self._point(target)
        self.record("rollback", target, previous=before, replaced=current.name)
        return target


class TenantHeads:
    """The gateway's per-tenant head lookup (thread-safe; the guard workers call it)."""

    def __init__(self, root: str | Path, base: InjectionHead, reload_s: float = 5.0) -> None:
        self.root = Path(root)
        self.base = base
        self.reload_s = reload_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, str | None, InjectionHead | None]] = {}  # checked at, artifact, head

    def __call__(self, tenant: str) -> InjectionHead | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(tenant)
        if hit is not None and now - hit[0] < self.reload_s:  # 0: checked on every request
            return hit[2]
        name, head = self._load(tenant, hit)
        with self._lock:
            self._cache[tenant] = (now, name, head)
        return head

    def _load(self, tenant: str, hit: tuple[float, str | None, InjectionHead | None] | None,
              ) -> tuple[str | None, InjectionHead | None]:
        try:
            current = HeadRegistry(tenant_folder(self.root, tenant)).current()
        except (ValueError, OSError, KeyError):
            return None, None
        if current is None:
            return None, None
        if hit is not None and hit[1] == current.name:
            return hit[1], hit[2]
        try:
            return current.name, load_head(current, self.base)
        except Exception as exc:  # noqa: BLE001 - a broken head never fails a request: the shipped one scores
            log.error("tenant %s: injection head %s unusable (%s: %s); the shipped head scores", tenant, current,
                      type(exc).__name__, exc)
            return current.name, None
