"""The gate an adapter passes before its canary, and its changelog entry (issue 26 items 4-5).

``verdict(evaluation, gate)``: the adapter must score at least the base's rate plus ``tune.gate.min_gain``
on the function's golden set and on the validation slice (each one that was evaluated), and no check's
pass rate (the output schema, each named check) may fall more than ``tune.gate.max_check_regression``
below the base's. An evaluation with neither a golden set nor a validation slice never passes.

``changelog(evaluation, previous)``: what changed, in numbers, against the base and against the
previous adapter of the same function in the registry (its promoted one, else its newest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from turnout.config_tune import GateConfig

SLICES = ("golden", "validation")


def _rate(evaluation: dict[str, Any], who: str, what: str) -> float | None:
    part = (evaluation.get(who) or {}).get(what) or {}
    rate = part.get("rate")
    return float(rate) if rate is not None else None


def verdict(evaluation: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """``{"passed": bool, "reasons": [...], "min_gain": ..., "max_check_regression": ...}``."""
    reasons: list[str] = []
    seen = 0
    for what in SLICES:
        base, tuned = _rate(evaluation, "base", what), _rate(evaluation, "adapter", what)
        if base is None or tuned is None:
            continue
        seen += 1
        if tuned < base + gate.min_gain - 1e-9:
            reasons.append(f"{what}: the adapter scores {tuned:.3f}, the base {base:.3f}; the gate needs at least "
                           f"{base + gate.min_gain:.3f} (tune.gate.min_gain {gate.min_gain})")
    if not seen:
        reasons.append("no golden set or validation slice was evaluated: nothing shows the adapter is better")
    base_checks = ((evaluation.get("base") or {}).get("golden") or {}).get("checks") or {}
    tuned_checks = ((evaluation.get("adapter") or {}).get("golden") or {}).get("checks") or {}
    for name, base_rate in sorted(base_checks.items()):
        tuned_rate = tuned_checks.get(name)
        if base_rate is None or tuned_rate is None:
            continue
        if base_rate - tuned_rate > gate.max_check_regression + 1e-9:
            reasons.append(f"check {name}: passes {tuned_rate:.3f} with the adapter, {base_rate:.3f} with the base "
                           f"(tune.gate.max_check_regression {gate.max_check_regression})")
    return {"passed": not reasons, "reasons": reasons, "min_gain": gate.min_gain,
            "max_check_regression": gate.max_check_regression}


def changelog(evaluation: dict[str, Any], previous: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The manifest's ``changelog``: each slice's rate with the adapter, the base, the previous adapter
    (``previous``: its id and evaluation), and the differences."""
    entry: dict[str, Any] = {"previous": previous[0] if previous else None}
    for what in SLICES:
        tuned, base = _rate(evaluation, "adapter", what), _rate(evaluation, "base", what)
        if tuned is None:
            continue
        line: dict[str, Any] = {"adapter": tuned, "base": base,
                                "vs_base": round(tuned - base, 4) if base is not None else None}
        if previous is not None:
            before = _rate(previous[1], "adapter", what)
            line["previous"] = before
            line["vs_previous"] = round(tuned - before, 4) if before is not None else None
        entry[what] = line
    parts = []
    for what in SLICES:
        if what in entry:
            line = entry[what]
            text = f"{what} {line['adapter']:.3f}"
            if line.get("vs_base") is not None:
                text += f" ({line['vs_base']:+.3f} vs base)"
            if line.get("vs_previous") is not None:
                text += f" ({line['vs_previous']:+.3f} vs {entry['previous']})"
            parts.append(text)
    entry["summary"] = "; ".join(parts) or "no evaluation"
    return entry


def register(registry: Any, folder: Path, function: str | None, *, base_sha256: str | None,
             public_keys: list[str], gate: GateConfig, by: str) -> Any:
    """Add an evaluated adapter folder to the registry (after the checks its engine will make: files, base
    weights, signature) and apply the gate: a refusal is recorded (status ``refused``, an audit entry with
    the reasons). Returns the registry row."""
    from turnout import adapter_manifest as am
    from turnout.weights import sha256_file

    _, manifest = am.verify(folder, base_sha256=base_sha256, public_keys=public_keys)
    evaluation = manifest.get("evaluation")
    if not isinstance(evaluation, dict):
        raise ValueError(f"{folder}: the manifest holds no evaluation; run `turnout adapters eval {folder} "
                         "--function NAME` (before signing)")
    function = function or evaluation.get("function")
    if not function:
        raise ValueError("--function: the evaluation names no function (the canary is a variant of one)")
    digest = sha256_file(folder / am.MANIFEST)
    row = registry.register(adapter_id=digest[:16], function=function, path=str(folder.resolve()),
                            manifest_sha256=digest, base_sha256=(manifest.get("base") or {}).get("sha256"),
                            evaluation=evaluation, by=by)
    if row.status == "registered":
        result = verdict(evaluation, gate)
        if not result["passed"]:
            row = registry.transition(row.id, "refused", by=by, reason="; ".join(result["reasons"]),
                                      audit={"gate": result})
    return row
