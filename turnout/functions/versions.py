"""A template's hash is its version; ``diff`` shows what changed between two variants of a
function, or between two git revisions of its variants (``WORKTREE``: the files as they are)."""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from turnout.functions.render import template_hash

if TYPE_CHECKING:
    from turnout.functions.spec import Function

WORKTREE = "WORKTREE"


def _unified(a: str, b: str, name_a: str, name_b: str) -> str:
    return "".join(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), name_a, name_b))


def _snapshot(spec: dict[str, Any], read: Any, variant: str) -> dict[str, Any] | None:
    v = (spec.get("variants") or {}).get(variant)
    if not isinstance(v, dict):
        return None
    system = read(v["system"]) if v.get("system") else None
    user = read(v["user"]) if v.get("user") else ""
    return {"system": system or "", "user": user or "", "hash": template_hash(system, user or ""),
            "route": v.get("route"), "weight": v.get("weight", 1.0), "params": v.get("params") or {}}


def _compare(label_a: str, a: dict[str, Any] | None, label_b: str, b: dict[str, Any] | None) -> list[str]:
    if a is None or b is None:
        missing = label_a if a is None else label_b
        return [f"{missing}: no such variant"]
    out = [f"template hash: {a['hash']} -> {b['hash']}" if a["hash"] != b["hash"]
           else f"template hash: {a['hash']} (same)"]
    for key in ("route", "weight", "params"):
        if a[key] != b[key]:
            out.append(f"{key}: {a[key]} -> {b[key]}")
    for role in ("system", "user"):
        d = _unified(a[role], b[role], f"{label_a} ({role})", f"{label_b} ({role})")
        if d:
            out.append(d.rstrip("\n"))
    return out


def _git_reader(folder: Path, rev: str) -> tuple[dict[str, Any], Any]:
    if rev == WORKTREE:
        def read_file(name: str) -> str | None:
            p = folder / name
            return p.read_text(encoding="utf-8") if p.is_file() else None
    else:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        rel = folder.resolve().relative_to(Path(top).resolve())

        def read_file(name: str) -> str | None:
            res = subprocess.run(["git", "-C", top, "show", f"{rev}:{(rel / name).as_posix()}"],
                                 capture_output=True, text=True)
            return res.stdout if res.returncode == 0 else None
    raw = read_file("function.yaml")
    if raw is None:
        raise ValueError(f"{folder}/function.yaml does not exist at revision {rev!r}")
    return yaml.safe_load(raw) or {}, read_file


def diff(fn: Function, a: str, b: str, variant: str | None = None) -> str:
    if a in fn.variants and b in fn.variants:
        spec = {"variants": {n: v.spec.model_dump(exclude_none=True) for n, v in fn.variants.items()}}

        def read(name: str) -> str:
            return (fn.folder / name).read_text(encoding="utf-8")

        return "\n".join([f"fn:{fn.name}: variant {a} -> variant {b}",
                          *_compare(a, _snapshot(spec, read, a), b, _snapshot(spec, read, b))])
    spec_a, read_a = _git_reader(fn.folder, a)
    spec_b, read_b = _git_reader(fn.folder, b)
    names = [variant] if variant else sorted(set(spec_a.get("variants") or {}) | set(spec_b.get("variants") or {}))
    out = [f"fn:{fn.name}: {a} -> {b}"]
    for name in names:
        out.append(f"== variant {name}")
        out += _compare(f"{a}:{name}", _snapshot(spec_a, read_a, name), f"{b}:{name}", _snapshot(spec_b, read_b, name))
    return "\n".join(out)
