"""What an engine stack did for one request: every engine call (an ``Attempt``) and every
failed hop of a fallback chain. The stack's wrappers write it; the pipeline reads it for the
response headers and the recorder for the ledger row (engine, tokens, cost).

What a request is billed for (``billed``): every attempt that produced output (a cascade's
weak draft and the strong answer both cost money, so do both halves of a rescued stream, a
restart's repeat of the text already sent and a restart whose answer was thrown away) and a
cancelled hedge (its prompt). Its cost and its ``usage`` (the ledger's tokens, and the
``usage`` the client gets) sum the same attempts, so a client that bills from ``usage`` bills
what turnout paid; ``split`` says which of those tokens reached the client. The engine of
record is the last one whose output the client got.

A pool engine (``turnout.engines.pool``) reads the attempt being made (``placing``, a context
variable set around each call by ``InstrumentedEngine``): whether the request may spill over to
the next engine of its chain (``Trail.may_spill``, decided by the pipeline), and it writes there
the endpoint that answered (the ledger's ``endpoint``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
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
    discarded: bool = False           # its output never reached the client (a restart that diverged)
    charged: bool = False             # billed for its prompt though it produced nothing (a cancelled hedge)
    endpoint: str | None = None       # a pool's endpoint that answered (turnout.engines.pool)

    @property
    def produced(self) -> bool:
        return self.ok or bool(self.usage.completion_tokens)

    def cost(self) -> float:
        return self.engine.cost(self.usage.prompt_tokens, self.usage.completion_tokens, self.busy)


@dataclass(slots=True)
class Rescue:
    """A stream that broke after ``after_chars`` characters reached the client, continued by
    ``by`` (``how``: prefill or restart). ``error`` is the break, also in ``hops``."""

    error: EngineError
    after_chars: int
    how: str
    by: str

    def to_json(self) -> dict[str, object]:
        return {"engine": self.error.engine, "error": self.error.code, "after_chars": self.after_chars,
                "rescue": self.how, "by": self.by}


@dataclass(slots=True)
class Trail:
    prompt_estimate: int = 0          # tokens of the request, for engines that do not count them
    attempts: list[Attempt] = field(default_factory=list)
    hops: list[EngineError] = field(default_factory=list)
    rescues: list[Rescue] = field(default_factory=list)
    may_spill: bool = False           # a saturated pool may pass the request on (route spill, not sensitive)

    def begin(self, engine: EngineInfo) -> Attempt:
        attempt = Attempt(engine)
        self.attempts.append(attempt)
        return attempt

    @property
    def answered(self) -> Attempt | None:
        """The attempt whose output the client got: the last one that produced any."""
        return next((a for a in reversed(self.attempts) if a.produced and not a.discarded), None)

    @property
    def delivered(self) -> list[Attempt]:
        """The attempts whose output the client got: one, or each part of a rescued stream."""
        if not self.rescues:
            a = self.answered
            return [a] if a is not None else []
        return [a for a in self.attempts if a.produced and not a.discarded]

    def rescue_of(self, hop: EngineError) -> Rescue | None:
        return next((r for r in self.rescues if r.error is hop), None)

    @property
    def engine(self) -> EngineInfo | None:
        a = self.answered
        return a.engine if a is not None else None

    @property
    def endpoint(self) -> str | None:
        """The pool endpoint that answered (None: not a pool, or no answer)."""
        a = self.answered
        return a.endpoint if a is not None else None

    @property
    def billed(self) -> list[Attempt]:
        """The attempts this request is billed for (the module's docstring says which)."""
        return [a for a in self.attempts if a.produced or a.charged]

    @property
    def usage(self) -> Usage:
        """Every billed token: what the ledger row and the client's ``usage`` report."""
        return _total(self.billed)

    @property
    def delivered_usage(self) -> Usage:
        """The tokens of the attempts whose output the client got (the baseline's tokens)."""
        return _total(self.delivered)

    def split(self) -> dict[str, object] | None:
        """``usage`` per billed attempt when more than one engine was billed (None otherwise):
        each with ``delivered`` (its output reached the client), and the tokens that did not
        (``discarded``: a cascade's weak draft, a thrown-away restart, a cancelled hedge);
        ``usage`` = the delivered attempts' tokens + ``discarded``."""
        billed = self.billed
        if len(billed) < 2:
            return None
        kept = {id(a) for a in self.delivered}
        lost = _total([a for a in billed if id(a) not in kept])
        return {"billed": [{"engine": a.engine.name, "prompt_tokens": a.usage.prompt_tokens,
                            "completion_tokens": a.usage.completion_tokens, "delivered": id(a) in kept}
                           for a in billed],
                "discarded": {"prompt_tokens": lost.prompt_tokens, "completion_tokens": lost.completion_tokens}}

    def cost(self) -> float:
        return sum(a.cost() for a in self.billed)


_PLACING: ContextVar[tuple[Trail, Attempt] | None] = ContextVar("turnout_placing", default=None)


@contextlib.contextmanager
def placing(trail: Trail, attempt: Attempt) -> Iterator[None]:
    """Within this block, the engine called is making ``attempt`` of ``trail``'s request."""
    token = _PLACING.set((trail, attempt))
    try:
        yield
    finally:
        _PLACING.reset(token)


def current() -> tuple[Trail, Attempt] | None:
    """The request's trail and the attempt being made now (None outside a request's stack)."""
    return _PLACING.get()


def _total(attempts: list[Attempt]) -> Usage:
    return Usage(sum(a.usage.prompt_tokens for a in attempts), sum(a.usage.completion_tokens for a in attempts))
