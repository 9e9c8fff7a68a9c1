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

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from turnout.artifact_registry import ArtifactRegistry
from turnout.guards.injection import InjectionHead

log = logging.getLogger("turnout.guards")
_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


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
class HeadRegistry(ArtifactRegistry):
    """The heads of one tenant, in ``folder`` (``h0001.json``, ...)."""

    prefix: ClassVar[str] = "h"
    suffix: ClassVar[str] = ".json"

    def add(self, head: InjectionHead) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.next_path()
        path.write_text(head.dumps(), encoding="utf-8")
        return path

    def rollback(self) -> Path | None:
        """Serve what served before the current head: the previous promoted head, or the shipped
        head (None) when the current one was the first. ValueError when nothing serves."""
        current = self.current()
        if current is None:
            raise ValueError(f"{self.folder}: no tenant head serves (the shipped head does); nothing to roll back")
        previous = self.previous_of(current.name)
        if not previous:
            (self.folder / "current.json").unlink()
            self.record("rollback", None, replaced=current.name, previous=None)
            return None
        target = self.folder / str(previous)
        if not target.is_file():
            raise ValueError(f"{self.folder}: the previous head {previous} is missing")
        before = self.previous_of(target.name)
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
