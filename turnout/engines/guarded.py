"""Privacy around an off-premises engine: it gets the request's protected copy (PII replaced
by placeholders) and its answers come back restored — whole answers, streamed deltas (a
placeholder split across chunks is held back until complete) and tool-call arguments.

The pipeline wraps only remote engines, and only when the guard step made a protected copy;
local engines see the request as is. What is protected, and whether the request may leave
at all, is decided by the guard step (``turnout.guards.step``), never here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, EngineInfo, aclose
from turnout.engines.wrapper import WrapperEngine
from turnout.guards.step import GuardState
from turnout.protocol import ChatRequest, EmbeddingRequest


class GuardedEngine(WrapperEngine):
    def __init__(self, inner: Engine, state: GuardState) -> None:
        self.state = state
        super().__init__(inner)

    def describe(self, info: EngineInfo) -> EngineInfo:
        if info.continuation == "prefill":
            # the protected copy is fixed, so a prefill (the restored text) could not be added
            # to it without sending restored values out: continue by restart instead
            return replace(info, continuation="restart")
        return info

    async def chat(self, req: ChatRequest) -> ChatResult:
        result = await self.inner.chat(self.state.request_for(self.info, req))
        return self.state.restore(self.info, result)

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        restore = self.state.stream(self.info)
        agen = self.inner.stream(self.state.request_for(self.info, req))
        try:
            async for d in agen:
                yield restore.delta(d) if restore is not None else d
        finally:
            await aclose(agen)

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        protected = self.state.protected
        if self.info.locality == "remote" and isinstance(protected, EmbeddingRequest):
            texts = protected.texts
        return await self.inner.embed(texts, dimensions)
