"""The Guard interface: what may pass.

A guard inspects text and returns typed findings with character spans and scores.
Findings never carry the raw value: callers slice it from the text they own, so a
finding can be logged, stored or counted without leaking what it found.

Guards are registered by name in the ``turnout.guards`` entry-point group (the built-ins
``secrets``, ``pii`` and ``injection`` too, in pyproject.toml); ``guards.detectors`` in
``turnout.yaml`` picks which run, and the entry's ``GuardFactory`` builds each from the
configuration. Also here: the types the guard step, the scanner and the policy share
(``Inspection``, ``Verdict``, ``Action``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pydantic import BaseModel

    from turnout.config import GuardsConfig

# a finding's coarse label, the key of policy rules and of ``guards.actions``: the built-ins report
# pii, secret, injection, and the output scan leak; a plugin guard reports its own kinds
FindingKind = str
# what a finding means for a request, weakest to strongest (turnout.guards.policy)
Action = Literal["allow", "pseudonymize", "keep_local", "block"]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind          # coarse label used by policy: pii | secret | injection | leak | a plugin's
    type: str                  # fine type, e.g. EMAIL_ADDRESS, AWS_ACCESS_KEY, PROMPT_INJECTION
    start: int                 # character span in the inspected text (0, 0 for whole-text findings)
    end: int
    score: float               # 0..1
    detector: str              # which guard found it


@runtime_checkable
class Guard(Protocol):
    """Inspects one text (a message, or an answer for output guards) and returns findings."""

    name: str                  # the detector, e.g. "pii"; findings name it in ``detector``

    def inspect(self, text: str) -> list[Finding]: ...


class GuardFactory(Protocol):
    """What a ``turnout.guards`` entry point names (the built-ins: the guard class itself).

    ``kinds`` are the finding kinds it reports: ``guards.actions`` and a route's ``guards`` may
    set an action for each. ``config_model`` (or None) validates ``guards.options.<name>``;
    ``scans_output`` makes it an output guard too (answers are scanned by it)."""

    kinds: tuple[str, ...]
    config_model: type[BaseModel] | None
    scans_output: bool

    def from_config(self, cfg: GuardsConfig, options: Any) -> Guard: ...


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
