"""The one fallback loop: an ordered chain of engines answered by the first that can.

An engine error that allows fallback (connection errors, timeouts, 429, 5xx, a stream that
ends before any output) is recorded as a hop in the request's trail and the next engine is
tried; one that does not (a 400 the client must fix) is raised at once; when every engine
failed, ``AllEnginesFailed`` carries each hop. A stream falls back only until its first
delta; a failure after that propagates (the client has already seen output).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, EngineInfo, aclose
from turnout.engines.trail import Trail
from turnout.errors import AllEnginesFailed, EngineError, EngineUnavailable
from turnout.protocol import ChatRequest

T = TypeVar("T")


class FallbackEngine(Engine):
    def __init__(self, engines: Sequence[Engine], trail: Trail) -> None:
        if not engines:
            raise ValueError("a fallback chain needs at least one engine")
        self.engines, self.trail = list(engines), trail
        self.info: EngineInfo = self.engines[0].info

    async def _first(self, call: Callable[[Engine], Awaitable[T]]) -> T:
        for engine in self.engines:
            try:
                return await call(engine)
            except EngineError as exc:
                self.trail.hops.append(exc)
                if not exc.fallback:
                    raise
        raise AllEnginesFailed(self.trail.hops)

    async def chat(self, req: ChatRequest) -> ChatResult:
        return await self._first(lambda e: e.chat(req))

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        return await self._first(lambda e: e.embed(texts, dimensions))

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        agen, first = await self._first(lambda e: _opened(e, req))
        try:
            yield first
            async for d in agen:
                yield d
        finally:
            await aclose(agen)


async def _opened(engine: Engine, req: ChatRequest) -> tuple[AsyncIterator[Delta], Delta]:
    """The engine's stream with its first delta read, or the error that kept it from one."""
    agen = engine.stream(req)
    try:
        return agen, await anext(agen)
    except StopAsyncIteration:
        raise EngineUnavailable("stream ended before any output", engine=engine.info.name) from None
    except BaseException:
        await aclose(agen)
        raise
