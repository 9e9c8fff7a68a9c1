"""The base of every engine that wraps one other engine (pydantic-ai's ``WrapperModel``):
whatever a wrapper does not override goes to the engine inside unchanged — ``start``,
``close``, ``ready``, ``chat``, ``stream`` (closed with the wrapper's), ``embed`` — and its
``info`` is the inner engine's, as ``describe`` sees it (refreshed after ``start``, which may
add facts such as the weights checksum).

    ResilientEngine   retries, timeouts, breaker     (turnout.engines.resilience)
    GuardedEngine     protected copy out, restored in (turnout.engines.guarded)
    InstrumentedEngine  the trail's attempts, spans  (turnout.engines.instrumented)
    Refused           never started, fails over      (turnout.engines.admission)

Engines over several others (``FallbackEngine``, ``CascadeEngine``) are not wrappers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, EngineInfo, aclose
from turnout.protocol import ChatRequest


class WrapperEngine(Engine):
    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.info = self.describe(inner.info)

    def describe(self, info: EngineInfo) -> EngineInfo:
        """This wrapper's ``info`` given the inner engine's: the same, unless a wrapper changes it."""
        return info

    async def start(self) -> None:
        await self.inner.start()
        self.info = self.describe(self.inner.info)

    async def close(self) -> None:
        await self.inner.close()

    async def ready(self) -> tuple[bool, str]:
        return await self.inner.ready()

    async def chat(self, req: ChatRequest) -> ChatResult:
        return await self.inner.chat(req)

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        agen = self.inner.stream(req)
        try:
            async for d in agen:
                yield d
        finally:
            await aclose(agen)

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        return await self.inner.embed(texts, dimensions)
