"""Routing strategies: how a route picks within its chain, and the engine stack it answers with.

    rules     the chain in order, falling back along it
    learned   a router artifact scores P(strong engine needed); at or above the threshold
              the strong engines (chain[1:]) go first, else the weak one (chain[0])
    cascade   chain[0] drafts; below the confidence threshold chain[1:] answers

A strategy is registered by name in the ``turnout.strategies`` entry-point group; the
built-ins above are registered there by turnout itself, exactly as a plugin would be. A route
names its strategy in turnout.yaml (``strategy:``); ``check`` validates the route when the
config is loaded, one instance per route serves requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from turnout import plugins
from turnout.engines.base import Engine
from turnout.engines.cascade import CascadeEngine
from turnout.engines.fallback import FallbackEngine
from turnout.engines.hedge import Hedge
from turnout.engines.trail import Trail
from turnout.protocol import ChatRequest
from turnout.routing.decision import Decision

if TYPE_CHECKING:
    from turnout.config import RouteConfig



class Strategy:
    """The rules strategy, and the base of every other: try the chain in order."""

    name: ClassVar[str] = "rules"

    def __init__(self, alias: str, route: RouteConfig) -> None:
        self.alias, self.route = alias, route
        # the route's hedged first token, with its TTFT window (lives as long as the strategy)
        self.hedge = Hedge(route.hedge) if route.hedge is not None else None

    @classmethod
    def check(cls, route: RouteConfig) -> None:
        """Raise ValueError if ``route`` lacks what this strategy needs (config load time)."""

    def start(self) -> None:
        """Load what the strategy needs (a router artifact) before the gateway serves."""

    async def decide(self, d: Decision, req: ChatRequest) -> None:
        """Refine the decision (order of the chain, score, reason) for this request."""

    def stack(self, d: Decision, engines: Sequence[Engine], trail: Trail) -> Engine:
        """The stack's shape: the engine that answers, from the chain's engines ready to call
        (``turnout.engines.stack`` guards and instruments them); by default the chain with
        fallback (hedged if configured)."""
        return FallbackEngine(engines, trail, self.hedge)


class RulesStrategy(Strategy):
    pass


class _WeakStrong(Strategy):
    @classmethod
    def check(cls, route: RouteConfig) -> None:
        if len(route.chain) < 2:
            raise ValueError(f"strategy {cls.name!r} needs a chain of at least two engines: [weak, strong, ...]")


class LearnedStrategy(_WeakStrong):
    name = "learned"

    @classmethod
    def check(cls, route: RouteConfig) -> None:
        super().check(route)
        if not route.router:
            raise ValueError("strategy 'learned' needs 'router': the path of a router artifact")

    def start(self) -> None:
        """Load the artifact (a file, or a registry folder's current one). A missing or broken one
        does not stop the gateway: the route is served by its rules and every decision says why."""
        from turnout.routing.serving import LearnedServing  # the `router` extra (numpy, scikit-learn)

        r = self.route
        assert r.router is not None
        self.serving = LearnedServing.from_routes({self.alias: (r.router, r.target_escalation, r.threshold)})

    async def decide(self, d: Decision, req: ChatRequest) -> None:
        """Score the prompt: at or above the threshold the strong engines go first; without a
        usable router the chain's order, with the reason."""
        v = await asyncio.to_thread(self.serving.decide, self.alias, req.prompt_text())
        d.reason, d.router = v.reason, v.artifact
        if v.escalate is None:
            return
        d.score, d.threshold = v.score, v.threshold
        if v.escalate:
            d.chain = d.chain[1:] + d.chain[:1]


class CascadeStrategy(_WeakStrong):
    name = "cascade"

    @classmethod
    def check(cls, route: RouteConfig) -> None:
        super().check(route)
        if route.threshold is None:
            raise ValueError(f"strategy 'cascade' needs 'threshold' (in units of confidence_signal "
                             f"{route.confidence_signal!r}; see `turnout eval cascade`)")
        if route.confidence_signal == "combined" and not route.confidence_model:
            raise ValueError("confidence_signal 'combined' needs 'confidence_model': the weights file written by "
                             "`turnout eval cascade --save-combination`")

    def start(self) -> None:
        self.combination = None  # the fitted weights of confidence_signal 'combined'
        if self.route.confidence_model:
            from turnout.routing.confidence import Combination

            self.combination = Combination.load(self.route.confidence_model)

    def stack(self, d: Decision, engines: Sequence[Engine], trail: Trail) -> Engine:
        weak = FallbackEngine(engines[:1], trail)
        strong = FallbackEngine(engines[1:], trail) if len(engines) > 1 else None
        return CascadeEngine(weak, strong, d, include_draft=self.route.include_draft,
                             signal=self.route.confidence_signal, combination=self.combination)


def strategy_class(name: str) -> type[Strategy]:
    cls: Any = plugins.load(plugins.STRATEGIES, name)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"routing strategy {name!r} is registered as {cls!r}, which is not a turnout Strategy")
    return cls
