"""Local first, escalate on doubt: the ``cascade`` strategy's engine.

The weak engine (a chain of its own, usually one local engine) drafts the answer; if its
confidence (the route's ``confidence_signal``, ``turnout.routing.confidence``) reaches the
route's threshold the draft is the answer, else the strong chain
answers the original request (with the draft attached when the route says
``include_draft``). A weak engine that fails is an escalation too. Streaming clients get the
kept draft replayed as a stream, or the strong engine's own stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from turnout.engines.base import ChatResult, Delta, Engine, aclose
from turnout.errors import AllEnginesFailed
from turnout.protocol import ChatRequest
from turnout.routing import cascade, confidence
from turnout.routing.confidence import Combination
from turnout.routing.decision import CascadeOutcome, Decision


class CascadeEngine(Engine):
    def __init__(self, weak: Engine, strong: Engine | None, decision: Decision, *, include_draft: bool = False,
                 signal: str = "mean_logprob", combination: Combination | None = None) -> None:
        assert decision.threshold is not None, "a cascade needs a threshold"
        self.weak, self.strong, self.decision = weak, strong, decision
        self.info = weak.info
        self.include_draft, self.signal, self.combination = include_draft, signal, combination

    async def draft(self, req: ChatRequest) -> tuple[ChatResult | None, ChatRequest]:
        """The weak engine's answer if it is kept, else None and the request for the strong chain."""
        d, threshold = self.decision, self.decision.threshold
        assert threshold is not None
        weak_name = self.weak.info.name
        try:
            result = await self.weak.chat(cascade.with_logprobs(req))
        except AllEnginesFailed:
            if self.strong is None:
                raise
            d.cascade = CascadeOutcome(weak_name, kept=False, failed=True, threshold=threshold)
            return None, req
        samples = []  # ``agreement`` compares the greedy draft with a second, sampled one (twice the local compute)
        if cascade.needs_second_sample(self.signal):
            try:
                samples.append(await self.weak.chat(cascade.second_sample(cascade.with_logprobs(req))))
            except AllEnginesFailed:
                pass  # no second sample: agreement is unknown, and an unknown confidence escalates
        d.signals = confidence.signals(result, samples, self.combination)
        d.score = conf = d.signals.get(self.signal)
        kept = conf is not None and conf >= threshold
        if self.strong is not None:  # a lone weak engine (the strong ones confined away) keeps its draft unjudged
            d.cascade = CascadeOutcome(weak_name, kept=kept, confidence=conf, threshold=threshold,
                                        draft=None if kept else result.content)
        if self.strong is None or kept:
            if not req.logprobs:
                result.logprobs = None
            return result, req
        if self.include_draft and result.content:
            return None, cascade.with_draft(req, result.content)
        return None, req

    async def chat(self, req: ChatRequest) -> ChatResult:
        kept, strong_req = await self.draft(req)
        if kept is not None:
            return kept
        assert self.strong is not None
        return await self.strong.chat(strong_req)

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        kept, strong_req = await self.draft(req)
        if kept is not None:
            agen = cascade.replay(kept)
        else:
            assert self.strong is not None
            agen = self.strong.stream(strong_req)
        try:
            async for d in agen:
                yield d
        finally:
            await aclose(agen)
