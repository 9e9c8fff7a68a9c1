"""The one place a request's engine stack is built (DESIGN.md, "The engine stack").

    leaf(engine, guard)       the engine as this request may call it: a remote engine behind
                              ``GuardedEngine`` when the guard step made a protected copy
    build(chain, engines, guard, trail, tracer, shape)
                              each engine of the chain as a leaf, inside ``InstrumentedEngine``
                              (its attempts in the request's trail), composed by ``shape``: the
                              route's strategy (``Strategy.stack``: fallback, hedged or not, or
                              a cascade of two chains); without one, the chain with fallback

The pipeline builds every request's stack here (``Gateway.stack``); the learning loop's shadow
call of a strong engine, made after the request was recorded, takes a ``leaf`` (not in the trail).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from turnout.engines.base import Engine
from turnout.engines.fallback import FallbackEngine
from turnout.engines.guarded import GuardedEngine
from turnout.engines.instrumented import InstrumentedEngine
from turnout.engines.trail import Trail
from turnout.guards.step import GuardState

Shape = Callable[[Sequence[Engine]], Engine]  # the leaves -> the engine that answers


def leaf(engine: Engine, guard: GuardState | None) -> Engine:
    """``engine`` as a request with this guard state may call it: an off-premises engine gets the
    protected copy (placeholders restored in its answers); a local one the request as is."""
    if guard is not None and guard.protected is not None and engine.info.locality == "remote":
        return GuardedEngine(engine, guard)
    return engine


def build(chain: Sequence[str], engines: Mapping[str, Engine], guard: GuardState | None, trail: Trail,
          tracer: Any = None, shape: Shape | None = None) -> Engine:
    """The engine that answers a request decided on ``chain``."""
    leaves = [InstrumentedEngine(leaf(engines[name], guard), trail, tracer) for name in chain]
    return shape(leaves) if shape is not None else FallbackEngine(leaves, trail)
