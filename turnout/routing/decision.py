"""What a router decides, and the facts it decides on."""

from __future__ import annotations

from dataclasses import dataclass, field

from turnout.protocol import SENSITIVE_LEVELS


@dataclass(slots=True)
class RequestFacts:
    """What routing may look at. Built once per request by the pipeline."""

    model: str
    tenant: str = "anonymous"
    sensitivity: str | None = None
    labels: set[str] = field(default_factory=set)
    estimated_tokens: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def sensitive(self) -> bool:
        return self.sensitivity in SENSITIVE_LEVELS or bool(self.labels & SENSITIVE_LEVELS)


@dataclass(slots=True)
class Decision:
    alias: str                     # the route alias (or engine name) the request resolved to
    chain: list[str]               # engines to try, in order
    rule: str                      # which rule or route made the choice
    reason: str                    # one human-readable sentence
    strategy: str = "rules"        # the route's strategy (turnout.strategies): rules, learned, cascade, ...
    score: float | None = None     # learned/cascade: P(strong engine needed) or confidence
    threshold: float | None = None
    confined: bool = False         # remote engines removed because the request is sensitive
    escalated: bool = False        # cascade: the weak engine's draft was not kept
    signals: dict[str, float | None] | None = None  # cascade: every confidence signal of the draft
    router: str | None = None      # learned: the artifact that scored (name@sha256 prefix; x-turnout-router)
