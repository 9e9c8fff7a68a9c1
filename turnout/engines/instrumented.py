"""The innermost wrapper of every engine in a request's stack: one ``Attempt`` in the
request's trail per call (busy time, tokens: what the ledger bills) and, when tracing is
on, one span per call with the GenAI semantic-convention attributes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, Usage, aclose
from turnout.engines.trail import Trail, placing
from turnout.engines.wrapper import WrapperEngine
from turnout.protocol import ChatRequest
from turnout.tracing import genai_attributes


class InstrumentedEngine(WrapperEngine):
    def __init__(self, inner: Engine, trail: Trail, tracer: Any = None) -> None:
        super().__init__(inner)
        self.trail, self.tracer = trail, tracer

    def _span(self, operation: str) -> contextlib.AbstractContextManager[Any]:
        if self.tracer is None:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(  # type: ignore[no-any-return]
            f"{operation} {self.info.model}", attributes=genai_attributes(self.inner, operation=operation))

    async def chat(self, req: ChatRequest) -> ChatResult:
        attempt = self.trail.begin(self.info)
        try:
            with self._span("chat") as span, placing(self.trail, attempt):
                result = await self.inner.chat(req)
                if span is not None:
                    span.set_attributes(genai_attributes(self.inner, result.usage, result.finish_reason))
        finally:
            attempt.busy = time.perf_counter() - attempt.started
        attempt.ok, attempt.usage = True, result.usage
        return result

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        """Relays the inner stream. Tokens: the final delta's usage, or, for a stream that
        broke or was cancelled, one token per content or tool-call piece delivered."""
        attempt = self.trail.begin(self.info)
        agen = self.inner.stream(req)
        pieces = 0
        try:
            with self._span("chat"), placing(self.trail, attempt):
                first = await anext(agen)
            attempt.ok = True
            d: Delta | None = first
            while d is not None:
                if d.content or d.tool_calls:
                    pieces += 1
                if d.finish_reason:
                    attempt.usage = d.usage or Usage()
                yield d
                d = await anext(agen, None)
        finally:
            attempt.busy = time.perf_counter() - attempt.started
            if attempt.ok and not attempt.usage.completion_tokens and not attempt.usage.prompt_tokens and pieces:
                attempt.usage = Usage(self.trail.prompt_estimate, pieces)
            await aclose(agen)

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        attempt = self.trail.begin(self.info)
        try:
            with self._span("embeddings"):
                result = await self.inner.embed(texts, dimensions)
        finally:
            attempt.busy = time.perf_counter() - attempt.started
        attempt.ok, attempt.usage = True, Usage(result.prompt_tokens or self.trail.prompt_estimate, 0)
        return result
