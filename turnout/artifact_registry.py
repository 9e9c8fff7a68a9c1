"""A folder of versioned artifacts: every one kept, which one serves, and an append-only history.

    <prefix>0001<suffix>, ...   every artifact, never overwritten
    history.jsonl               one event per line (fitted, promoted, refused, rollback, ...)
    current.json                {"artifact": ...}: the one that serves (replaced atomically)
    fit.lock                    held while a fit runs (:meth:`ArtifactRegistry.lock`)

The learned router's per-route registry (``turnout.routing.artifacts``) and the injection guard's
per-tenant heads (``turnout.guards.heads``) are this folder with their own file kind and rollback rule.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class ArtifactRegistry:
    folder: Path
    prefix: ClassVar[str] = "a"
    suffix: ClassVar[str] = ".bin"

    def _number(self, path: Path) -> int | None:
        m = re.fullmatch(rf"{re.escape(self.prefix)}(\d{{4,}}){re.escape(self.suffix)}", path.name)
        return int(m.group(1)) if m else None

    @property
    def history_file(self) -> Path:
        return self.folder / "history.jsonl"

    def artifacts(self) -> list[Path]:
        """Every artifact, oldest first."""
        found = [(n, p) for p in self.folder.glob(f"{self.prefix}*{self.suffix}") if (n := self._number(p)) is not None]
        return [p for _, p in sorted(found)]

    def next_path(self) -> Path:
        existing = self.artifacts()
        n = (self._number(existing[-1]) or 0) + 1 if existing else 1
        return self.folder / f"{self.prefix}{n:04d}{self.suffix}"

    def current(self) -> Path | None:
        pointer = self.folder / "current.json"
        if not pointer.is_file():
            return None
        return self.folder / str(json.loads(pointer.read_text())["artifact"])

    def _point(self, path: Path) -> None:
        tmp = self.folder / "current.json.tmp"
        tmp.write_text(json.dumps({"artifact": path.name, "since": now()}))
        os.replace(tmp, self.folder / "current.json")

    def record(self, event: str, artifact: Path | None, **fields: Any) -> dict[str, Any]:
        entry = {"ts": now(), "event": event, "artifact": artifact.name if artifact else None, **fields}
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
        """Hold the fit lock (waits for a fit in progress, in this or another process)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "fit.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def promote(self, path: Path, **fields: Any) -> None:
        previous = self.current()
        self._point(path)
        self.record("promoted", path, previous=previous.name if previous else None, **fields)

    def previous_of(self, name: str) -> str | None:
        """What served before ``name`` was last made current (so rollbacks chain backwards)."""
        for e in reversed(self.history()):
            if e.get("artifact") == name and e.get("event") in ("promoted", "rollback"):
                previous = e.get("previous")
                return str(previous) if previous else None
        return None
