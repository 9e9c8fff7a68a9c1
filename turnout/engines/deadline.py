"""How long a stream may take to start and to go on: an engine's own timeouts when nothing
stands behind it, shorter ones when its chain has a spare.

Alone, an engine is worth waiting for: a slow first token is still the only answer, so its
``first_token_timeout`` and ``idle_timeout`` (30 s by default) apply. With a later engine in
the chain, every second spent on a silent engine is a second the spare could have been
answering; a careful client gives up after 10 s and asks another provider. So, with a spare:

* first token: ``fallback_first_token_timeout`` (10 s) until ``MIN_SAMPLES`` times to first
  token are known, then ``ttft_multiple`` (3) x the engine's recent p95, never less than that
  10 s and never more than ``first_token_timeout`` (an engine known to be slow, a reasoning
  model, is given the time it usually needs; a fast one is not cut sooner than a careful
  client would, since its time to first token grows with the prompt and a p95 of short
  prompts says little about a long one);
* between two chunks: ``fallback_idle_timeout`` (10 s), when a later engine can continue the
  broken stream (``continuation`` not ``none``).

The cost of giving up sooner is what the abandoned request had cost (providers bill the prompt
of a request they were working on) and the spare's answer: paid only by requests slower than
the timeout, which would otherwise have waited up to three times as long.

``FallbackEngine`` knows whether an engine has a spare; the engine's ``ResilientEngine`` owns
its timeouts and its latency window. The first tells the second through a context variable set
around the call (``backed``), as a deadline travels with a call, so the ``Engine`` interface
stays one method. The engine reads it when the stream starts (the rest of a stream is pulled
from another task, whose context does not have it).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from turnout.config import Resilience

MIN_SAMPLES = 20  # times to first token known before the p95 is trusted
WINDOW = 200  # recent times to first token kept per engine


@dataclass(frozen=True, slots=True)
class Spare:
    first_token: bool = False  # a later engine of the chain can answer instead
    midstream: bool = False  # a later engine can continue this engine's broken stream


NONE = Spare()
_SPARE: ContextVar[Spare] = ContextVar("turnout_spare", default=NONE)


def spare() -> Spare:
    """What stands behind the engine being called now (``NONE`` outside a chain)."""
    return _SPARE.get()


@contextlib.contextmanager
def backed(s: Spare) -> Iterator[None]:
    """Call an engine, within this block, knowing ``s`` stands behind it."""
    token = _SPARE.set(s)
    try:
        yield
    finally:
        _SPARE.reset(token)


class Window:
    """Recent samples (seconds) and their 95th percentile."""

    def __init__(self, size: int = WINDOW) -> None:
        self._seen: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, seconds: float) -> None:
        self._seen.append(seconds)

    def p95(self) -> float | None:
        seen = sorted(self._seen)
        return seen[min(len(seen) - 1, int(0.95 * len(seen)))] if seen else None


class Deadlines:
    """One engine's stream timeouts for a call, given what stands behind it."""

    def __init__(self, policy: Resilience) -> None:
        self.policy = policy
        self.ttft = Window()

    def first_token(self, s: Spare) -> float:
        p = self.policy
        if not s.first_token:
            return p.first_token_timeout
        least = min(p.fallback_first_token_timeout, p.first_token_timeout)
        p95 = self.ttft.p95()
        if not p.ttft_multiple or p95 is None or len(self.ttft) < MIN_SAMPLES:
            return least
        return min(p.first_token_timeout, max(least, p.ttft_multiple * p95))

    def idle(self, s: Spare) -> float:
        p = self.policy
        return min(p.idle_timeout, p.fallback_idle_timeout) if s.midstream else p.idle_timeout
