"""The pipeline's authenticate step: bearer token -> API key -> tenant, then limits and
budgets reserved before any engine is called and settled after.

With no key in the store, the gateway is open (tenant "anonymous"); ``turnout serve``
refuses to listen beyond loopback in that state. Lookups are cached for ``ttl`` seconds
(hashes, not plaintext), so a revoked key stops working within that time.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from turnout.errors import AuthenticationFailed, PermissionDenied
from turnout.governance.keys import ApiKey, KeyStore, hash_key

if TYPE_CHECKING:
    from turnout.ledger.base import Ledger
from turnout.governance.limits import Limiter, MemoryLimiter, RedisLimiter, Reservation, Windows, to_micros


def open_limiter(redis_url: str | None, ledger: Ledger) -> Limiter:
    """Redis for several replicas; otherwise in-memory counters whose day and month spend
    start from what the ledger recorded, so a restart does not reset a budget."""
    if redis_url:
        return RedisLimiter(redis_url)
    from datetime import UTC, datetime

    limiter = MemoryLimiter()
    now = time.time()
    w = Windows.at(now)
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for kind, window, since in (("usd_day", w.day, day), ("usd_month", w.month, day.replace(day=1))):
        for key_id, costs in ledger.spend_since(since.timestamp()).items():
            # each request was settled in whole micro-dollars, rounded up: count them the same way
            limiter.seed(key_id, kind, window, sum(to_micros(c) for c in costs))
    return limiter


class Access:
    def __init__(self, keys: KeyStore, limiter: Limiter, ttl: float = 2.0) -> None:
        self.keys, self.limiter, self.ttl = keys, limiter, ttl
        self._open_until = 0.0
        self._open = True
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def is_open(self) -> bool:
        now = time.monotonic()
        if now >= self._open_until:
            self._open = not await asyncio.to_thread(self.keys.list, include_revoked=False)
            self._open_until = now + self.ttl
        return self._open

    async def authenticate(self, token: str | None, route: str) -> ApiKey | None:
        """The caller's key, or None when the gateway is open. Raises 401/403."""
        if await self.is_open():
            return None
        if not token:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer tk-...'")
        digest, now = hash_key(token), time.monotonic()
        hit = self._cache.get(digest)
        if hit is None or hit[0] < now:
            key = await asyncio.to_thread(self.keys.lookup_by_plaintext, token)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = hit = (now + self.ttl, key)
        key = hit[1]
        if key is None:
            raise AuthenticationFailed("invalid API key")
        if not key.active:
            raise AuthenticationFailed(f"API key {key.key_id} was revoked")
        if not key.allows(route):
            raise PermissionDenied(f"API key {key.key_id} may not use route {route!r} (allowed: {', '.join(key.routes)})",
                                   code="route_not_allowed")
        return key

    async def reserve(self, key: ApiKey | None, tokens: int, cost: float) -> Reservation | None:
        if key is None or not any(v is not None for v in (key.limits.rpm, key.limits.tpm,
                                                          key.limits.usd_per_day, key.limits.usd_per_month)):
            return None
        return await self.limiter.check_and_reserve(key.key_id, key.limits, tokens_estimate=tokens, cost_estimate=cost)

    async def settle(self, reservation: Reservation | None, tokens: int, cost: float) -> None:
        if reservation is not None and not reservation.settled:
            await self.limiter.settle(reservation, actual_tokens=tokens, actual_cost=cost)

    async def close(self) -> None:
        await self.limiter.close()
        self.keys.close()
