"""What an engine stack did for one request: every engine call (an ``Attempt``) and every
failed hop of a fallback chain. The stack's wrappers write it; the pipeline reads it for the
response headers and the recorder for the ledger row (engine, tokens, cost).

Cost is the sum over the attempts that produced output (a cascade's weak draft and the
strong answer both cost money); the engine of record is the last one that produced output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from turnout.engines.base import EngineInfo, Usage
from turnout.errors import EngineError


@dataclass(slots=True)
class Attempt:
    """One call into one engine."""

    engine: EngineInfo
    started: float = field(default_factory=time.perf_counter)
    busy: float = 0.0                 # seconds the engine worked on it (owned hardware bills this)
    usage: Usage = field(default_factory=Usage)
    ok: bool = False                  # produced a complete answer (or, for a stream, its first delta)

    @property
    def produced(self) -> bool:
        return self.ok or bool(self.usage.completion_tokens)

    def cost(self) -> float:
        return self.engine.cost(self.usage.prompt_tokens, self.usage.completion_tokens, self.busy)


@dataclass(slots=True)
class Trail:
    prompt_estimate: int = 0          # tokens of the request, for engines that do not count them
    attempts: list[Attempt] = field(default_factory=list)
    hops: list[EngineError] = field(default_factory=list)

    def begin(self, engine: EngineInfo) -> Attempt:
        attempt = Attempt(engine)
        self.attempts.append(attempt)
        return attempt

    @property
    def answered(self) -> Attempt | None:
        """The attempt whose output the client got: the last one that produced any."""
        return next((a for a in reversed(self.attempts) if a.produced), None)

    @property
    def engine(self) -> EngineInfo | None:
        a = self.answered
        return a.engine if a is not None else None

    @property
    def usage(self) -> Usage:
        a = self.answered
        return a.usage if a is not None else Usage()

    def cost(self) -> float:
        return sum(a.cost() for a in self.attempts if a.produced)
