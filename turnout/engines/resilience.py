"""Resilience around one engine, as a wrapper: bounded concurrency with a bounded queue,
a circuit breaker probed soon after it opens, timeouts (whole answer; a stream's first token and
the wait between its chunks, shorter when the chain has a spare: ``turnout.engines.deadline``),
and bounded retries with exponential backoff that honour Retry-After. Every engine is built wrapped in one
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
from turnout.engines.deadline import Deadlines, spare
from turnout.engines.wrapper import WrapperEngine
from turnout.errors import CircuitOpen, EngineError, EngineRateLimited, EngineTimeout, EngineUnavailable
from turnout.protocol import ChatRequest

T = TypeVar("T")


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (``probe`` seconds) -> half-open: one
    request, the probe, goes through. Its success closes the circuit; its failure reopens it
    for twice the last wait, at most ``cooldown``; a probe that ends with no verdict (cancelled,
    a request the upstream rejected as malformed) lets the next request probe. So an engine
    that recovers gets traffic back within ``cooldown`` (1 s by default) of recovering, and a
    long outage costs one probe request per ``cooldown``."""

    def __init__(self, failures: int, cooldown: float, probe: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown, self.clock = failures, cooldown, clock
        self.first_wait = min(probe, cooldown) if probe is not None else cooldown
        self.wait = self.first_wait  # the current open interval
        self.consecutive = 0
        self.opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.wait else "open"

    def left(self) -> float:
        """Seconds until the next probe may go (0 when it may go now)."""
        return 0.0 if self.opened_at is None else max(0.0, self.wait - (self.clock() - self.opened_at))

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self.consecutive, self.opened_at, self._trial, self.wait = 0, None, False, self.first_wait

    def failure(self, probe: bool = False) -> None:
        """A failure; ``probe``: of the half-open circuit's probe (the next one waits twice as long)."""
        self.consecutive += 1
        if probe:
            self._trial = False
            if self.opened_at is not None:
                self.wait = min(self.cooldown, self.wait * 2)
        if probe or self.opened_at is not None or self.consecutive >= self.threshold:
            self.opened_at = self.clock()

    def abandon(self) -> None:
        """The probe ended without telling whether the engine is healthy: another may probe."""
        self._trial = False


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
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_cooldown, policy.breaker_probe)
        self.capacity = Capacity(policy.max_concurrency, policy.max_queue)
        self.deadlines = Deadlines(policy)  # stream timeouts, shorter with a spare; the TTFT window
        self._sleep = sleep

    async def ready(self) -> tuple[bool, str]:
        ok, detail = await self.inner.ready()
        state = self.breaker.state
        if state != "closed":
            return False, f"circuit {state}; {detail}"
        return ok, detail

    def _admit(self, tried: list[EngineError]) -> bool:
        """Whether this attempt is the half-open circuit's probe; ``CircuitOpen`` (with the
        failures this request met here before, ``tried``) when the circuit refuses it."""
        probe = self.breaker.state == "half-open"
        if self.breaker.allow():
            return probe
        before = "; this request's attempts here: " + "; ".join(f"{e.code}: {e.message}" for e in tried) if tried \
            else ""
        raise CircuitOpen(f"circuit open after repeated failures{before}", engine=self.info.name,
                          retry_after=max(1.0, self.breaker.left()), reason="circuit open", attempts=tried)

    async def _backoff(self, attempt: int, exc: EngineError) -> None:
        """Sleep before the next attempt, or re-raise if the wait would be too long."""
        delay = self.policy.backoff * (2**attempt) * (0.5 + random.random() / 2)
        if exc.retry_after is not None:  # a 429, or a 503 that said when to come back
            if exc.retry_after > self.policy.max_retry_after:
                raise exc  # waiting that long is worse than falling back
            delay = max(delay, exc.retry_after)
        await self._sleep(delay)

    def _record(self, exc: EngineError, probe: bool = False) -> None:
        if _counts_against_breaker(exc):
            self.breaker.failure(probe)
        elif probe:
            self.breaker.abandon()

    async def _attempts(self, call: Callable[[], Awaitable[T]], keep_slot: bool = False) -> tuple[T, bool]:
        """Call with retries; the result and whether its attempt was the circuit's probe. With
        ``keep_slot`` the capacity slot stays held after success (a stream keeps it until it
        ends) and the caller must release it (and settle the breaker)."""
        tried: list[EngineError] = []
        for attempt in range(self.policy.retries + 1):
            probe = self._admit(tried)
            try:
                await self.capacity.acquire(self.info.name)
            except BaseException:
                if probe:
                    self.breaker.abandon()
                raise
            try:
                result = await call()
            except BaseException as exc:
                self.capacity.release()
                if not isinstance(exc, EngineError):
                    if probe:
                        self.breaker.abandon()
                    raise
                self._record(exc, probe)
                tried.append(exc)
                if not exc.retryable or attempt == self.policy.retries:
                    raise
                if self.breaker.state == "open":  # this failure (re)opened it: refused now, not after a backoff
                    self._admit(tried)
                await self._backoff(attempt, exc)
                continue
            if not keep_slot:
                self.capacity.release()
                self.breaker.success()
            return result, probe
        raise AssertionError("unreachable")

    async def chat(self, req: ChatRequest) -> ChatResult:
        async def once() -> ChatResult:
            try:
                async with asyncio.timeout(self.policy.timeout):
                    return await self.inner.chat(req)
            except TimeoutError as exc:
                raise EngineTimeout(f"no answer within {self.policy.timeout:g}s", engine=self.info.name,
                                    reason=f"no answer within {self.policy.timeout:g}s") from exc

        return (await self._attempts(once))[0]

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        async def once() -> EmbeddingResult:
            try:
                async with asyncio.timeout(self.policy.timeout):
                    return await self.inner.embed(texts, dimensions)
            except TimeoutError as exc:
                raise EngineTimeout(f"no embeddings within {self.policy.timeout:g}s", engine=self.info.name,
                                    reason=f"no embeddings within {self.policy.timeout:g}s") from exc

        return (await self._attempts(once))[0]

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        """Retries until a first delta arrives; then relays the rest, holding the slot. The
        first-token and idle timeouts are this call's (``turnout.engines.deadline``: shorter
        when the chain has a spare); each first token's wait is observed for the adaptive one."""
        holder: dict[str, AsyncIterator[Delta]] = {}
        backing = spare()  # read now: the rest of the stream is pulled from another task
        first_wait, idle = self.deadlines.first_token(backing), self.deadlines.idle(backing)

        async def first() -> Delta:
            agen = self.inner.stream(req)
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(first_wait):
                    d = await anext(agen)
            except TimeoutError as exc:
                await aclose(agen)
                raise EngineTimeout(f"no first token within {first_wait:g}s", engine=self.info.name,
                                    reason=f"no first token within {first_wait:g}s") from exc
            except StopAsyncIteration as exc:
                raise EngineUnavailable("stream ended before any output", engine=self.info.name,
                                        reason="stream ended before any output") from exc
            except BaseException:
                await aclose(agen)
                raise
            self.deadlines.ttft.observe(time.perf_counter() - t0)
            holder["agen"] = agen
            return d

        head, probe = await self._attempts(first, keep_slot=True)
        agen = holder["agen"]
        settled = False
        try:
            yield head
            while True:
                d = await self._next(agen, idle)
                if d is None:
                    break
                yield d
        except EngineError as exc:
            settled = True
            self._record(exc, probe)
            raise
        else:
            settled = True
            self.breaker.success()
        finally:
            if probe and not settled:  # the client left during the probe: no verdict
                self.breaker.abandon()
            self.capacity.release()
            await aclose(agen)

    async def _next(self, agen: AsyncIterator[Delta], idle: float) -> Delta | None:
        """The stream's next delta (None at its end), within ``idle`` seconds when that is
        shorter than the dialect's own idle timeout (a spare can continue the stream)."""
        if idle >= self.policy.idle_timeout:
            return await anext(agen, None)
        try:
            async with asyncio.timeout(idle):  # one read, never held across a yield
                return await anext(agen, None)
        except TimeoutError as exc:
            raise EngineTimeout(f"no chunk within {idle:g}s mid-stream", engine=self.info.name,
                                reason=f"stalled mid-stream ({idle:g}s)") from exc
