"""The Guard interface: what may pass.

A guard inspects text and returns typed findings with character spans and scores.
Findings never carry the raw value: callers slice it from the text they own, so a
finding can be logged, stored or counted without leaking what it found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

FindingKind = Literal["pii", "secret", "injection", "leak"]


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
