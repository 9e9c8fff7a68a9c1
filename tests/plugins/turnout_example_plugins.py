"""A third-party plugin, as a separate distribution would ship it: the test suite puts this
folder (with its ``.dist-info``) on a gateway's PYTHONPATH, and turnout finds its entry points
exactly as it finds its own built-ins."""

from __future__ import annotations

from turnout.protocol import ChatRequest
from turnout.routing.decision import Decision
from turnout.routing.strategies import Strategy


class LastFirstStrategy(Strategy):
    """Tries the route's chain from its last engine back to its first (``options.why`` is
    its own setting, read from turnout.yaml)."""

    name = "last-first"

    @classmethod
    def check(cls, route) -> None:  # type: ignore[no-untyped-def]
        if not isinstance(route.options.get("why"), str):
            raise ValueError("strategy 'last-first' needs options.why: a sentence for the reason header")

    async def decide(self, d: Decision, req: ChatRequest) -> None:
        d.chain = d.chain[::-1]
        d.reason = f"last-first: {self.route.options['why']}"
