"""The Guard interface: what may pass.

A guard inspects text and returns typed findings with character spans and scores.
Findings never carry the raw value: callers slice it from the text they own, so a
finding can be logged, stored or counted without leaking what it found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FindingKind = Literal["pii", "secret", "injection", "leak"]
# what a finding means for a request, weakest to strongest (turnout.guards.policy)
Action = Literal["allow", "pseudonymize", "keep_local", "block"]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind          # coarse label used by policy: pii | secret | injection | leak
    type: str                  # fine type, e.g. EMAIL_ADDRESS, AWS_ACCESS_KEY, PROMPT_INJECTION
    start: int                 # character span in the inspected text (0, 0 for whole-text findings)
    end: int
    score: float               # 0..1
    detector: str              # which guard found it


@runtime_checkable
class Guard(Protocol):
    name: str

    def inspect(self, text: str) -> list[Finding]: ...


@dataclass
class Inspection:
    labels: set[str] = field(default_factory=set)             # "pii", "secret", "injection", "guard_error"
    findings: list[tuple[int, Finding]] = field(default_factory=list)  # (message index, finding)
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # per guard, summed over messages

    @property
    def injection_score(self) -> float:
        return max((f.score for _, f in self.findings if f.kind == "injection"), default=0.0)

    def for_message(self, index: int) -> list[Finding]:
        return [f for i, f in self.findings if i == index]


@dataclass
class Verdict:
    action: Action
    safe_for_remote: bool
    to_pseudonymize: list[tuple[int, Finding]]   # (message index, finding) to replace before a remote call
    reasons: list[str]

    @property
    def blocked(self) -> bool:
        return self.action == "block"
