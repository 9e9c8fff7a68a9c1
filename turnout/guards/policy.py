"""What to do with findings: per finding kind, an action for remote and for local engines.

Actions, weakest to strongest: ``allow`` < ``pseudonymize`` < ``keep_local`` < ``block``.
``keep_local`` means "may not leave the premises": on a remote engine the caller must
re-route to a local one or refuse; on a local engine it is the same as ``allow``.

Fail closed: an inspection that carries an error (a detector raised or ran past its
time budget) is never safe for remote, whatever its findings say.

Shadow: the finding kinds in ``GuardPolicy.shadow`` are labels only (``guards.mode``, a route's
``guard_mode``): ``decide`` passes over them, and :func:`outcomes` says what they would have done.
Only kinds whose one effect is a refusal may be shadowed (``turnout.config.SHADOWABLE_KINDS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from turnout.guards.base import Action, Finding, Inspection, Verdict

Locality = Literal["local", "remote"]
ORDER: dict[str, int] = {"allow": 0, "pseudonymize": 1, "keep_local": 2, "block": 3}


@dataclass(frozen=True)
class Rule:
    remote: Action
    local: Action = "allow"
    min_score: float = 0.0          # findings scoring below this are ignored by the rule


@dataclass(frozen=True)
class GuardPolicy:
    """Rules per finding kind, optionally refined per ``kind:TYPE`` (e.g. ``pii:US_SSN``).
    ``injection_block`` is the score at or above which an injection finding blocks the
    request on any engine (None: use the guard's calibrated threshold, carried in the
    finding type ``JAILBREAK``)."""

    rules: Mapping[str, Rule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    injection_block: float | None = None
    on_error: Action = "keep_local"
    shadow: frozenset[str] = frozenset()   # finding kinds scored and labelled, never acted on

    def rule_for(self, f: Finding) -> Rule:
        return self.rules.get(f"{f.kind}:{f.type}") or self.rules.get(f.kind) or Rule("keep_local")

    def with_actions(self, actions: Mapping[str, Action] | None) -> GuardPolicy:
        """This policy with the remote action of each finding kind in ``actions`` replaced
        (``guards.actions``, or a route's ``guards``); local engines keep the kind's local action."""
        if not actions:
            return self
        rules = dict(self.rules)
        for kind, action in actions.items():
            rules[kind] = Rule(remote=action)
        return GuardPolicy(rules=rules, injection_block=self.injection_block, on_error=self.on_error,
                           shadow=self.shadow)

    def with_modes(self, modes: Mapping[str, str] | None) -> GuardPolicy:
        """This policy with the kinds ``modes`` names put in shadow (``"shadow"``) or back to enforce."""
        if not modes:
            return self
        shadow = {k for k in self.shadow if modes.get(k, "shadow") == "shadow"}
        shadow |= {k for k, m in modes.items() if m == "shadow"}
        return GuardPolicy(rules=self.rules, injection_block=self.injection_block, on_error=self.on_error,
                           shadow=frozenset(shadow))


DEFAULT_RULES: dict[str, Rule] = {
    "secret": Rule(remote="keep_local"),
    "pii": Rule(remote="pseudonymize"),
    "injection": Rule(remote="allow"),     # flagged as a label; blocking is by score, below
    "leak": Rule(remote="block", local="block"),
}


def decide(inspection: Inspection, locality: Locality, policy: GuardPolicy | None = None) -> Verdict:
    """The action for this request on an engine of ``locality``.

    - ``block``: refuse (injection above threshold, or a rule says so);
    - ``keep_local``: only for remote engines; route to a local engine or refuse;
    - ``pseudonymize``: replace ``to_pseudonymize`` before the call, restore after;
    - ``allow``: send as is.
    ``safe_for_remote`` is False whenever a finding needs ``keep_local`` or ``block`` on a
    remote engine, or the inspection failed."""
    policy = policy or GuardPolicy()
    action: Action = "allow"
    reasons: list[str] = []
    to_pseudo: list[tuple[int, Finding]] = []
    safe = True

    def raise_to(a: Action, why: str) -> None:
        nonlocal action
        if ORDER[a] > ORDER[action]:
            action = a
        reasons.append(why)

    if inspection.error is not None:
        safe = False
        a: Action = policy.on_error if locality == "remote" else "allow"
        if policy.on_error == "block":
            a = "block"
        raise_to(a, f"guard failure: {inspection.error}")

    for idx, f in inspection.findings:
        if f.kind in policy.shadow:
            continue
        rule = policy.rule_for(f)
        if f.score < rule.min_score:
            continue
        if f.kind == "injection":
            threshold = policy.injection_block
            hit = f.score >= threshold if threshold is not None else f.type == "JAILBREAK"
            if hit:
                safe = False
                raise_to("block", f"injection score {f.score:.2f}")
            continue
        remote_action = rule.remote
        if ORDER[remote_action] >= ORDER["keep_local"]:
            safe = False
        a = rule.remote if locality == "remote" else rule.local
        if a == "keep_local" and locality == "local":
            a = "allow"
        if a == "pseudonymize":
            to_pseudo.append((idx, f))
        if a != "allow":
            raise_to(a, f"{f.kind}:{f.type} -> {a}")
    return Verdict(action, safe, to_pseudo if action == "pseudonymize" else [], _unique(reasons))


@dataclass(frozen=True)
class Outcome:
    """What one finding kind did to a request: ``flagged`` (it has findings), ``blocks`` (they
    would refuse it on any engine), and whether the kind runs in ``shadow`` (then it did not)."""

    kind: str
    shadow: bool
    blocks: bool

    @property
    def blocked(self) -> bool:
        return self.blocks and not self.shadow

    def labels(self) -> set[str]:
        """The ledger labels beside the kind's own: ``<kind>_shadow`` for a shadowed kind's findings,
        ``<kind>_blocked`` or, in shadow, ``<kind>_would_block``."""
        out = {f"{self.kind}_shadow"} if self.shadow else set()
        if self.blocks:
            out.add(f"{self.kind}_would_block" if self.shadow else f"{self.kind}_blocked")
        return out


def outcomes(inspection: Inspection, policy: GuardPolicy) -> list[Outcome]:
    """Per finding kind present: would its findings alone block the request on any engine
    (as ``decide`` for a local engine, shadow ignored)?"""
    enforce = GuardPolicy(rules=policy.rules, injection_block=policy.injection_block, on_error=policy.on_error)
    out = []
    for kind in sorted({f.kind for _, f in inspection.findings}):
        alone = Inspection(findings=[(i, f) for i, f in inspection.findings if f.kind == kind])
        out.append(Outcome(kind, kind in policy.shadow, decide(alone, "local", enforce).blocked))
    return out


def _unique(xs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(xs))
