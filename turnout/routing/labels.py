"""Routing labels learned from traffic: for one prompt, was the weak engine's answer good enough?

A label says how well each engine answered one prompt, in [0, 1], where it came from and between
which engines. Sources (:data:`SOURCES`):

    cascade    a cascade escalated: the weak answer was judged not good enough, the strong one exists
    shadow     a weak-answered request was also sent to the strong engine off the response path, and
               a judge compared the two answers
    feedback   the user rated the answer of one engine (the other's outcome is unknown: None)
    replay     the replay simulator (``turnout.evals.replay``) read the outcome from its CSV

``judge`` names how the outcome was decided, with the rubric version for an LLM judge
(``llm:<engine>:rubric-v1``), ``exact-answer``, ``json-schema``, ``user``, ``cascade:*`` or ``labels``.
The store is :mod:`turnout.ledger.labels`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SOURCES = ("cascade", "shadow", "feedback", "replay")


@dataclass(frozen=True, slots=True)
class Label:
    """One labelled prompt. Scores in [0, 1]; None where that engine's outcome is unknown."""

    tenant: str
    alias: str
    prompt: str                 # pseudonymized (see the module docstring)
    weak_engine: str
    strong_engine: str
    source: str
    judge: str
    weak_score: float | None
    strong_score: float | None
    request_id: str | None = None
    cost_usd: float = 0.0       # what obtaining the label cost (the shadow call, the judge call)
    ts: float = 0.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"label source must be one of {SOURCES}, got {self.source!r}")
        for name in ("weak_score", "strong_score"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.weak_score is None and self.strong_score is None:
            raise ValueError("a label needs the outcome of at least one engine")

    def values(self) -> tuple[Any, ...]:
        return (self.ts or time.time(), self.tenant, self.alias, self.prompt,
                hashlib.sha256(self.prompt.encode()).hexdigest(), self.weak_engine, self.strong_engine, self.source,
                self.judge, self.weak_score, self.strong_score, self.request_id, self.cost_usd)


def counts_by_source(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[str(r["source"])] = out.get(str(r["source"]), 0) + 1
    return out
