"""A pool: one engine served by several endpoints of the same model (an engine entry with
``endpoints:``; docs/fleet.md). It is an engine like any other, built by
``turnout.engines.registry.build_engine`` inside the engine's ``ResilientEngine`` (whose retries,
timeouts, circuit breaker and capacity then apply to the pool as a whole), so routes, fallback
chains, cascades and the ledger see one engine; inside, each endpoint is the dialect's own
engine talking to its url (``turnout.engines.endpoint.Endpoint``).

Each request is placed by the engine's balance strategy (``turnout.engines.balance``) among the
endpoints that may take it:

* **up**: not ejected, not draining. An endpoint is ejected after ``eject_after`` consecutive
  failures (requests or health probes); the prober (``turnout.engines.pool_probe``) re-admits it
  when a probe succeeds ``cooldown_s`` after the ejection. A request that fails on an endpoint
  before any output is tried on another endpoint of the pool (each at most once) before the
  failure goes to the chain around the pool; a 4xx about the request itself is not.
* **not saturated**: an endpoint holding ``max_concurrency`` of the gateway's requests, or whose
  server reports ``queue_threshold`` requests waiting, is saturated. When every endpoint is, a
  request whose route allows it (``spill: true``, a later engine in its chain, the request not
  sensitive nor kept local by the guards: ``Trail.may_spill``) spills over: ``PoolSaturated``,
  a hop ``spill`` in the ledger and the ``x-turnout-fallbacks`` header, and the chain's next
  engine answers. Any other request goes to an endpoint that is not full, or waits in the
  gateway (at most ``max_wait_s``) until one frees.

Draining (``drain``, the admin API): the endpoint gets no new requests; those in flight finish.
The endpoint that answered goes in the request's attempt (the ledger's ``endpoint``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from turnout.config import EngineConfigBase
from turnout.config_pool import EndpointConfig, PoolConfig
from turnout.engines.balance import Balancer, balancer_class
from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, aclose
from turnout.engines.deadline import spare
from turnout.engines.endpoint import STALE_PROBES, Endpoint
from turnout.engines.pool_probe import Prober
from turnout.engines.trail import current
from turnout.errors import EngineContextTooLong, EngineError, EngineUnavailable, PoolSaturated
from turnout.protocol import ChatRequest

R = TypeVar("R")

log = logging.getLogger("turnout.engines.pool")


def is_endpoint_fault(exc: EngineError) -> bool:
    """Whether a failure says something about the endpoint (another endpoint may do better), not
    about the request: a prompt too long for the model is too long for every endpoint of it."""
    return exc.fallback and not isinstance(exc, (EngineContextTooLong, PoolSaturated))


class PoolEngine(Engine):
    def __init__(self, name: str, cfg: EngineConfigBase, members: Sequence[Engine]) -> None:
        endpoints: list[EndpointConfig] = list(getattr(cfg, "endpoints", None) or ())
        if len(endpoints) != len(members) or not members:
            raise ValueError("a pool needs one member engine per endpoint")
        self.name = name
        self.settings: PoolConfig = getattr(cfg, "pool", PoolConfig())
        fresh = STALE_PROBES * self.settings.probe_interval_s
        self.endpoints = [Endpoint(ec, m, fresh_s=fresh) for ec, m in zip(endpoints, members, strict=True)]
        self.by_name = {e.name: e for e in self.endpoints}
        self.balancer: Balancer = balancer_class(getattr(cfg, "balance", "round_robin"))(self.settings.options)
        self.info = members[0].info
        self.spills = 0
        self.waiting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.prober = Prober(self)

    # ==== life cycle =========================================================================
    async def start(self) -> None:
        for e in self.endpoints:
            await e.engine.start()
        self.info = self.endpoints[0].engine.info
        await self.prober.start()

    async def close(self) -> None:
        await self.prober.close()
        for e in self.endpoints:
            await e.engine.close()

    async def ready(self) -> tuple[bool, str]:
        up = [e for e in self.endpoints if e.eligible]
        others = "; ".join(f"{e.name}: {e.state}" for e in self.endpoints if not e.eligible)
        detail = f"{len(up)}/{len(self.endpoints)} endpoints up" + (f" ({others})" if others else "")
        return bool(up), detail

    # ==== operations (the admin API) =========================================================
    def endpoint(self, name: str) -> Endpoint | None:
        return self.by_name.get(name)

    def drain(self, name: str, draining: bool = True) -> Endpoint:
        """Take ``name`` out of rotation (its requests in flight finish), or put it back."""
        e = self.by_name[name]
        if e.draining != draining:
            log.warning("engine %s: endpoint %s %s", self.name, name, "draining" if draining else "back in rotation")
        e.draining = draining
        if draining:
            self.balancer.forget(e)  # its conversations move now, not after their next miss
        else:
            self.wake(all_waiters=True)
        return e

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for e in self.endpoints:
            s = e.published()
            out.append({"name": e.name, "state": e.state, "in_flight": e.in_flight, "weight": e.weight,
                        "max_concurrency": e.max_concurrency, "served": e.served, "failed": e.failed,
                        "ejections": e.ejections, "readmissions": e.readmissions,
                        "server": None if s is None else {"waiting": s.waiting, "running": s.running,
                                                          "kv_use": s.kv_use}})
        return out

    # ==== health (the prober and the requests) ===============================================
    def failed(self, e: Endpoint, exc: EngineError) -> bool:
        """Count ``exc`` against ``e`` when it is the endpoint's fault; True if it was."""
        if not is_endpoint_fault(exc):
            return False
        if e.failure(self.settings.eject_after):
            self.balancer.forget(e)
            log.warning("engine %s: endpoint %s ejected after %d consecutive failures (last: %s)", self.name, e.name,
                        e.failures, exc.code)
        return True

    def wake(self, all_waiters: bool = False) -> None:
        """A slot freed (or endpoints came back): the first waiting request (or all) tries again."""
        while self._waiters:
            f = self._waiters.popleft()
            if not f.done():
                f.set_result(None)
                if not all_waiters:
                    return

    # ==== placement ==========================================================================
    async def place(self, req: ChatRequest, tried: Sequence[Endpoint]) -> Endpoint:
        """The endpoint that takes ``req`` now (its slot held: ``release`` it), or waits for one;
        ``PoolSaturated`` when every endpoint is saturated and the request may spill."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.max_wait_s
        while True:
            up = [e for e in self.endpoints if e.eligible and e not in tried]
            if not up:
                states = ", ".join(f"{e.name}: {'tried' if e in tried else e.state}" for e in self.endpoints)
                raise self.spent(EngineUnavailable(f"no endpoint of the pool can take the request ({states})",
                                                   engine=self.name, reason="no endpoint up",
                                                   retry_after=self.settings.cooldown_s or 1.0))
            threshold = self.settings.queue_threshold
            open_ = [e for e in up if not e.saturated(threshold)]
            if not open_ and self.may_spill():
                self.spills += 1
                raise PoolSaturated(f"all {len(up)} endpoints of the pool are past their queue threshold "
                                    f"(max_concurrency, or {threshold} waiting at the server)", engine=self.name,
                                    reason="every endpoint saturated: spilled over")
            choice = open_ or [e for e in up if not e.full()]
            if choice:
                e = self.balancer.pick(req, choice)
                self.balancer.placed(req, e)
                e.in_flight += 1
                return e
            left = until - loop.time()
            if left <= 0:
                raise self.spent(EngineUnavailable(
                    f"every endpoint of the pool stayed full for {self.settings.max_wait_s:g}s", engine=self.name,
                    reason="pool full", retry_after=1.0))
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            self.waiting += 1
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                pass
            finally:
                self.waiting -= 1
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)

    @staticmethod
    def spent(exc: EngineError) -> EngineError:
        """``exc`` after the pool tried what it could: the chain moves on now, no retry on this engine
        (its ``ResilientEngine`` would only wait and place the request again)."""
        exc.retryable = False
        return exc

    @staticmethod
    def may_spill() -> bool:
        """The request being placed may leave the pool: its route spills, it is not confined to local
        engines, and a later engine of its chain can answer."""
        now = current()
        return now is not None and now[0].may_spill and spare().first_token

    def release(self, e: Endpoint) -> None:
        e.in_flight -= 1
        self.wake()

    @staticmethod
    def note(e: Endpoint) -> None:
        now = current()
        if now is not None:
            now[1].endpoint = e.name

    def last_chance(self, tried: Sequence[Endpoint]) -> bool:
        return not any(e.eligible and e not in tried for e in self.endpoints)

    # ==== the Engine interface ===============================================================
    async def _answered(self, req: ChatRequest, call: Callable[[Engine], Awaitable[R]]) -> R:
        """``call`` on the endpoint the balancer places ``req`` on; on an endpoint's failure, again on
        another one while any is left (a whole answer: nothing reached the client yet)."""
        tried: list[Endpoint] = []
        while True:
            e = await self.place(req, tried)
            self.note(e)
            try:
                result = await call(e.engine)
            except EngineError as exc:
                if not self.failed(e, exc):
                    raise
                tried.append(e)
                if self.last_chance(tried):
                    raise
                continue
            finally:
                self.release(e)
            e.succeeded()
            return result

    async def chat(self, req: ChatRequest) -> ChatResult:
        return await self._answered(req, lambda engine: engine.chat(req))

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        """Failover between endpoints before the first delta; after it, the endpoint's slot is
        held until the stream ends, and a break goes to the chain (mid-stream rescue)."""
        tried: list[Endpoint] = []
        while True:
            e = await self.place(req, tried)
            self.note(e)
            agen = e.engine.stream(req)
            try:
                first = await anext(agen)
                break
            except StopAsyncIteration:
                self.release(e)
                exc: EngineError = EngineUnavailable("stream ended before any output", engine=self.name,
                                                     reason="stream ended before any output")
            except EngineError as err:
                self.release(e)
                await aclose(agen)
                exc = err
            except BaseException:
                self.release(e)
                await aclose(agen)
                raise
            if not self.failed(e, exc):
                raise exc
            tried.append(e)
            if self.last_chance(tried):
                raise exc
        ok = False
        try:
            yield first
            async for d in agen:
                yield d
            ok = True
        except EngineError as exc:
            self.failed(e, exc)
            raise
        finally:
            self.release(e)
            await aclose(agen)
            if ok:
                e.succeeded()

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        req = ChatRequest.model_validate({"model": self.name, "messages": [{"role": "user", "content": "".join(
            texts[:1])}]})  # placed like a chat request whose prompt is the first text
        return await self._answered(req, lambda engine: engine.embed(texts, dimensions))
