"""Resilience around one engine, as a wrapper: bounded concurrency with a bounded queue,
a circuit breaker, timeouts (whole answer, first token of a stream), and bounded retries with
exponential backoff that honour Retry-After. Every engine is built wrapped in one
(``turnout.engines.registry.build_engine``, the entry's ``resilience:`` keys); a retry is decided
by the error's ``retryable``, so a dialect only has to raise the right ``EngineError``.

Streams are retried only before their first delta; once a stream has produced output a
failure propagates to the chain around it. Moving on to the next engine of a chain (before
output: fallback; after: mid-stream rescue, else the client's stream ends with an error event)
is ``turnout.engines.fallback.FallbackEngine``'s job, not this wrapper's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from turnout.config import Resilience
from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, aclose
from turnout.engines.wrapper import WrapperEngine
from turnout.errors import EngineError, EngineRateLimited, EngineTimeout, EngineUnavailable
from turnout.protocol import ChatRequest

T = TypeVar("T")


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (cooldown) -> half-open: one trial call."""

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown, self.clock = failures, cooldown, clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self.consecutive, self.opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self.consecutive += 1
        self._trial = False
        if self.opened_at is not None or self.consecutive >= self.threshold:
            self.opened_at = self.clock()


class Capacity:
    """At most ``slots`` calls run; at most ``queue`` wait; beyond that, refuse at once."""

    def __init__(self, slots: int, queue: int) -> None:
        self._sem = asyncio.Semaphore(slots)
        self.max_waiting = queue
        self.waiting = 0
        self.in_flight = 0

    async def acquire(self, engine: str) -> None:
        if self._sem.locked() and self.waiting >= self.max_waiting:
            raise EngineUnavailable("engine at capacity (queue full)", engine=engine, retry_after=1.0,
                                    reason="at capacity (queue full)")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._sem.release()


def _counts_against_breaker(exc: EngineError) -> bool:
    # A request the upstream rejected as malformed says nothing about the engine's health.
    return exc.retryable or isinstance(exc, (EngineUnavailable, EngineTimeout, EngineRateLimited))


class ResilientEngine(WrapperEngine):
    def __init__(self, inner: Engine, policy: Resilience, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        super().__init__(inner)
        self.policy = policy
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_cooldown)
        self.capacity = Capacity(policy.max_concurrency, policy.max_queue)
        self._sleep = sleep

    async def ready(self) -> tuple[bool, str]:
        ok, detail = await self.inner.ready()
        state = self.breaker.state
        if state != "closed":
            return False, f"circuit {state}; {detail}"
        return ok, detail

    def _admit(self) -> None:
        if not self.breaker.allow():
            b = self.breaker
            left = b.cooldown - (b.clock() - b.opened_at) if b.opened_at is not None else b.cooldown
            raise EngineUnavailable("circuit open after repeated failures", engine=self.info.name,
                                    retry_after=max(1.0, left), reason="circuit open")

    async def _backoff(self, attempt: int, exc: EngineError) -> None:
        """Sleep before the next attempt, or re-raise if the wait would be too long."""
        delay = self.policy.backoff * (2**attempt) * (0.5 + random.random() / 2)
        if exc.retry_after is not None:  # a 429, or a 503 that said when to come back
            if exc.retry_after > self.policy.max_retry_after:
                raise exc  # waiting that long is worse than falling back
            delay = max(delay, exc.retry_after)
        await self._sleep(delay)

    def _record(self, exc: EngineError) -> None:
        if _counts_against_breaker(exc):
            self.breaker.failure()

    async def _attempts(self, call: Callable[[], Awaitable[T]], keep_slot: bool = False) -> T:
        """Call with retries. With ``keep_slot`` the capacity slot stays held after success
        (a stream keeps it until it ends) and the caller must release it."""
        for attempt in range(self.policy.retries + 1):
            self._admit()
            await self.capacity.acquire(self.info.name)
            try:
                result = await call()
            except BaseException as exc:
                self.capacity.release()
                if not isinstance(exc, EngineError):
                    raise
                self._record(exc)
                if not exc.retryable or attempt == self.policy.retries:
                    raise
                await self._backoff(attempt, exc)
                continue
            if not keep_slot:
                self.capacity.release()
                self.breaker.success()
            return result
        raise AssertionError("unreachable")

    async def chat(self, req: ChatRequest) -> ChatResult:
        async def once() -> ChatResult:
            try:
                async with asyncio.timeout(self.policy.timeout):
                    return await self.inner.chat(req)
            except TimeoutError as exc:
                raise EngineTimeout(f"no answer within {self.policy.timeout:g}s", engine=self.info.name,
                                    reason=f"no answer within {self.policy.timeout:g}s") from exc

        return await self._attempts(once)

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        async def once() -> EmbeddingResult:
            try:
                async with asyncio.timeout(self.policy.timeout):
                    return await self.inner.embed(texts, dimensions)
            except TimeoutError as exc:
                raise EngineTimeout(f"no embeddings within {self.policy.timeout:g}s", engine=self.info.name,
                                    reason=f"no embeddings within {self.policy.timeout:g}s") from exc

        return await self._attempts(once)

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        """Retries until a first delta arrives; then relays the rest, holding the slot."""
        holder: dict[str, AsyncIterator[Delta]] = {}

        async def first() -> Delta:
            agen = self.inner.stream(req)
            try:
                async with asyncio.timeout(self.policy.first_token_timeout):
                    d = await anext(agen)
            except TimeoutError as exc:
                await aclose(agen)
                raise EngineTimeout(
                    f"no first token within {self.policy.first_token_timeout:g}s", engine=self.info.name,
                    reason=f"no first token within {self.policy.first_token_timeout:g}s") from exc
            except StopAsyncIteration as exc:
                raise EngineUnavailable("stream ended before any output", engine=self.info.name,
                                        reason="stream ended before any output") from exc
            except BaseException:
                await aclose(agen)
                raise
            holder["agen"] = agen
            return d

        head = await self._attempts(first, keep_slot=True)
        agen = holder["agen"]
        try:
            yield head
            async for d in agen:
                yield d
        except EngineError as exc:
            self._record(exc)
            raise
        else:
            self.breaker.success()
        finally:
            self.capacity.release()
            await aclose(agen)
