"""What a router decides, and the facts it decides on.

Code reads the fields, never the sentence: whether the route's own strategy applies is
``Decision.own_route``, what a cascade did with its draft is ``Decision.cascade``. The sentence
users see (``x-turnout-reason``, the ledger's ``reason``) is :attr:`Decision.explanation`,
rendered from them.
"""

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


@dataclass(frozen=True, slots=True)
class CascadeOutcome:
    """What a cascade did with its weak engine's draft: kept it, or escalated because the weak
    engine failed or its confidence was below the threshold."""

    weak: str                        # the weak engine's name
    kept: bool                       # the draft is the answer
    failed: bool = False             # escalated because the weak engine failed (no confidence)
    confidence: float | None = None  # the route's confidence_signal of the draft (None: unknown)
    threshold: float | None = None
    draft: str | None = field(default=None, repr=False)  # the escalated draft's text (capture keeps it, if on)

    @property
    def cause(self) -> str | None:
        """Why the cascade escalated (``failed`` or ``confidence``); None when the draft was kept."""
        return None if self.kept else "failed" if self.failed else "confidence"

    def __str__(self) -> str:
        if self.failed:
            return f"cascade: {self.weak} failed, escalated"
        conf = "none" if self.confidence is None else f"{self.confidence:.3f}"
        bound = "none" if self.threshold is None else f"{self.threshold:g}"
        return (f"cascade kept {self.weak}: confidence {conf} >= {bound}" if self.kept
                else f"cascade escalated: confidence {conf} < {bound}")


@dataclass(slots=True)
class Decision:
    alias: str                     # the route alias (or engine name) the request resolved to
    chain: list[str]               # engines to try, in order
    rule: str                      # which rule or route made the choice
    reason: str                    # one human-readable sentence, the router's or the strategy's
    own_route: bool = False        # the alias's own route chose the chain (no policy rule): its strategy applies
    strategy: str = "rules"        # the route's strategy (turnout.strategies): rules, learned, cascade, ...
    score: float | None = None     # learned/cascade: P(strong engine needed) or confidence
    threshold: float | None = None
    confined: bool = False         # remote engines removed because the request is sensitive
    cascade: CascadeOutcome | None = None  # cascade with a strong chain: what it did with the weak draft
    notes: list[str] = field(default_factory=list)  # what changed the chain after the choice (confined, skipped)
    signals: dict[str, float | None] | None = None  # cascade: every confidence signal of the draft
    router: str | None = None      # learned: the artifact that scored (name@sha256 prefix; x-turnout-router)

    @property
    def escalated(self) -> bool:
        """cascade: the weak engine's draft was not kept."""
        return self.cascade is not None and not self.cascade.kept

    @property
    def explanation(self) -> str:
        """The sentence users see (``x-turnout-reason``, the ledger's ``reason``): ``reason``,
        then what narrowed the chain, then what the cascade did. A strategy that rewrites ``reason``
        keeps the notes (a confined request says so on every route)."""
        parts = [self.reason, *self.notes, *([str(self.cascade)] if self.cascade is not None else [])]
        return "; ".join(parts)
