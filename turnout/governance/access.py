"""Who is calling: the auth mode, bearer token -> API key -> tenant and roles, then limits
and budgets reserved before any engine is called and settled after.

The mode is fixed at start-up (:func:`resolve_mode`) and never follows the key table:

* ``keys``: every protected request needs an active, unexpired key with the right role;
  no key is 401, also when the store holds no key at all.
* ``open``: every caller is tenant ``anonymous`` with every role; only on loopback.

Lookups are cached for ``ttl`` seconds (by hash, never plaintext; the requests that miss the
cache together share one lookup of their key), so a key revoked or rotated through any replica
stops working on every replica within ``ttl`` (KEY_CACHE_S); a new key works at once (an
unknown token is not remembered as unknown for long either).
The worker processes of one ``turnout serve --workers N`` share a :class:`KeyEpoch`: a key
revoked or rotated through one of them is refused by all of them from their next request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from turnout.errors import AuthenticationFailed, PermissionDenied
from turnout.governance.epoch import KeyEpoch
from turnout.governance.key_store import KeyTables
from turnout.governance.keys import ROLES, ApiKey, check_key, hash_key, same_person
from turnout.governance.limits import (
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    Reservation,
    SQLiteLimiter,
    Windows,
    to_micros,
)

if TYPE_CHECKING:
    from turnout.ledger.base import Ledger

Mode = Literal["keys", "open"]
KEY_CACHE_S = 2.0  # the bound on how long a revocation takes to reach every replica
OPEN_TENANT = "anonymous"
MAX_TOKEN_CHARS = 512


def open_limiter(redis_url: str | None, ledger: Ledger, shared_db: str | Path | None = None) -> Limiter:
    """Redis for several replicas; else, with ``shared_db`` (several worker processes on one host:
    ``turnout serve --workers N``), counters in that SQLite file, each step one ``BEGIN IMMEDIATE``
    transaction; otherwise in-memory counters. Day and month spend start from what the ledger
    recorded, so a restart does not reset a budget."""
    if redis_url:
        return RedisLimiter(redis_url)
    from datetime import UTC, datetime

    now = time.time()
    w = Windows.at(now)
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spent: dict[tuple[str, str, str], int] = {}
    for kind, window, since in (("usd_day", w.day, day), ("usd_month", w.month, day.replace(day=1))):
        for key_id, costs in ledger.spend_since(since.timestamp()).items():
            # each request was settled in whole micro-dollars, rounded up: count them the same way
            spent[(key_id, kind, window)] = sum(to_micros(c) for c in costs)
    if shared_db is not None:
        shared = SQLiteLimiter(shared_db)
        shared.seed(spent)
        return shared
    limiter = MemoryLimiter()
    for (key_id, kind, window), value in spent.items():
        limiter.seed(key_id, kind, window, value)
    return limiter


def resolve_mode(requested: Mode | None, loopback: bool, keys_held: int) -> tuple[Mode, str]:
    """The mode to serve in, and a line saying why; ValueError when it must not start.

    ``auth`` unset: ``keys`` if the store holds any key, revoked and expired ones included (so
    neither upgrading nor revoking every key ever opens a gateway that had keys), else ``open``
    on loopback; beyond loopback it must be ``keys``."""
    if requested == "open" and not loopback:
        raise ValueError("auth: open serves anyone without a key, so it is only allowed on a loopback address; "
                         "set auth: keys (and create a key with `turnout keys create --tenant NAME`) "
                         "or listen on 127.0.0.1")
    if requested is not None:
        return requested, f"auth: {requested} (from the configuration)"
    if keys_held:
        return "keys", (f"auth: keys ({keys_held} API key(s) in the store, revoked and expired ones included: "
                        "a store that ever held a key is never served open; set auth: keys|open to choose)")
    if not loopback:
        raise ValueError("no API keys exist and auth is not set, so the gateway would be open to anyone who can "
                         "reach it; set auth: keys and create a key with `turnout keys create --tenant NAME`, "
                         "or listen on 127.0.0.1")
    return "open", ("auth: open to local callers on loopback only (no API keys; set auth: keys and create one "
                    "with `turnout keys create --tenant NAME` to require keys)")


def token_from(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header; None if absent or unreadable; never
    raises. HTTP Basic is not taken: a browser caches Basic credentials and sends them with every
    request to the site, whatever page asks (browsers log in with a session instead:
    ``turnout.governance.sessions``)."""
    if not authorization or len(authorization) > 4 * MAX_TOKEN_CHARS:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    return None


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: a tenant, its roles, its key (None in open mode), and whether
    it acts for every tenant (an all-tenants admin key; anyone in open mode)."""

    tenant: str
    roles: tuple[str, ...]
    key: ApiKey | None = None
    all_tenants: bool = False

    def has_role(self, *roles: str) -> bool:
        mine = set(self.roles) | ({"viewer"} if "admin" in self.roles else set())
        return bool(mine & set(roles))

    @property
    def admin(self) -> bool:
        """An admin of its tenant; of every tenant only with ``all_tenants``."""
        return "admin" in self.roles


OPEN = Principal(OPEN_TENANT, ROLES, all_tenants=True)


class Access:
    def __init__(self, keys: KeyTables, limiter: Limiter, mode: Mode = "keys", ttl: float = KEY_CACHE_S,
                 epoch: KeyEpoch | None = None) -> None:
        """``epoch``: shared by the worker processes of one gateway (a revocation through any of
        them empties every worker's cache at its next request)."""
        if mode not in ("keys", "open"):
            raise ValueError(f"auth mode must be 'keys' or 'open', got {mode!r}")
        self.keys, self.limiter, self.mode, self.ttl = keys, limiter, mode, ttl
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        # one lookup in flight per digest, which every request with that key awaits (no herd on the store when
        # a cached entry lapses); ``_generation`` counts forgets, so a lookup begun before one is not cached
        self._inflight: dict[str, asyncio.Task[ApiKey | None]] = {}
        self._generation = 0
        self.epoch, self._seen = epoch, epoch.value() if epoch is not None else 0

    async def _lookup(self, token: str) -> ApiKey | None:
        if len(token) > MAX_TOKEN_CHARS:
            return None
        if self.epoch is not None and (seen := self.epoch.value()) != self._seen:  # revoked through another worker
            self._drop_all()
            self._seen = seen
        digest = hash_key(token)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] >= time.monotonic():
            return hit[1]
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(token, digest, self._generation))
            self._inflight[digest] = task
            task.add_done_callback(lambda done: self._landed(digest, done))
        # shielded: a caller that goes away (its client disconnected) does not cancel the others' lookup
        return await asyncio.shield(task)

    async def _fetch(self, token: str, digest: str, generation: int) -> ApiKey | None:
        """One lookup in the store, cached unless a key was forgotten meanwhile (it may have read the key
        before its revocation); a lookup that fails is not cached and fails every request awaiting it."""
        expires = time.monotonic() + self.ttl
        key = await asyncio.to_thread(self.keys.lookup_by_plaintext, token)
        if generation == self._generation:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (expires, key)
        return key

    def _landed(self, digest: str, task: asyncio.Task[ApiKey | None]) -> None:
        if self._inflight.get(digest) is task:
            del self._inflight[digest]
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have gone before it failed

    def _drop_all(self) -> None:
        self._cache.clear()
        self._inflight.clear()  # a later request looks up afresh rather than await a lookup begun before
        self._generation += 1

    def forget(self, key_id: str) -> None:
        """Drop this replica's cached lookups of a key (after revoking or rotating it here), and
        with an ``epoch`` every other worker's. A lookup in flight is not cached, and requests
        after this one look up afresh."""
        self._cache = {d: hit for d, hit in self._cache.items() if hit[1] is None or hit[1].key_id != key_id}
        self._inflight.clear()
        self._generation += 1
        if self.epoch is not None:
            self.epoch.bump()
            self._seen = self.epoch.value()  # this worker's cache is already right

    async def principal(self, token: str | None, roles: tuple[str, ...], route: str | None = None) -> Principal:
        """The caller, if it holds one of ``roles`` (and may use ``route``); raises 401/403.
        In open mode, tenant ``anonymous`` with every role."""
        if self.mode == "open":
            return OPEN
        key = await self.identify(token)
        assert key is not None
        self.authorize(key, route, roles)
        return Principal(key.tenant, key.roles, key, key.all_tenants)

    async def identify(self, token: str | None) -> ApiKey | None:
        """Who calls: the key of ``token`` (None in open mode); 401 when there is none, or it is
        unknown, revoked or expired. What it may do is :meth:`authorize`'s."""
        if self.mode == "open":
            return None
        if not token:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer tk-...'")
        return check_key(await self._lookup(token))

    async def authenticate(self, token: str | None, route: str, role: str = "user") -> ApiKey | None:
        """The caller's key (None in open mode), which must hold ``role`` and may use ``route``.
        Raises 401/403."""
        key = await self.identify(token)
        if key is not None:
            self.authorize(key, route, (role,))
        return key

    @staticmethod
    def authorize(key: ApiKey, route: str | None, roles: tuple[str, ...] = ("user",)) -> None:
        """403 unless ``key`` may use ``route`` and holds one of ``roles``."""
        check_key(key, route)
        if not key.has_role(*roles):
            raise PermissionDenied(f"API key {key.key_id} has role(s) {', '.join(key.roles)}; this needs "
                                   f"{' or '.join(roles)}", code="role_not_allowed")

    async def delegated(self, key_id: str, route: str, role: str = "user") -> ApiKey | None:
        """A task's model call, made for the key that started the task: that key, looked up by
        id (so a key revoked or expired since stops its tasks), which must still hold ``role``
        and may use ``route``. None in open mode."""
        if self.mode == "open":
            return None
        key = check_key(await asyncio.to_thread(self.keys.get, key_id), route)
        if not key.has_role(role):
            raise PermissionDenied(f"API key {key.key_id} no longer has role {role}", code="role_not_allowed")
        return key

    async def same_person(self, key: ApiKey, other_id: str | None) -> bool:
        """Four eyes: whether ``key`` acts for the same person as the key ``other_id`` (the same
        key, or both name one owner; :func:`~turnout.governance.keys.same_person`)."""
        if other_id is None:
            return False
        if other_id == key.key_id:
            return True
        other = await asyncio.to_thread(self.keys.get, other_id) if key.owner is not None else None
        return other is not None and same_person(key, other)

    async def admit(self, key: ApiKey | None, tokens: int, input_tokens: int = 0) -> Reservation | None:
        """Count a request against its key's requests and tokens per minute (``tokens`` estimated
        from its input and token limit), before any expensive step; raises 429 (or 403 when it
        can never fit). The request stays counted whatever happens to it later, and its
        ``input_tokens`` (what the gateway reads of it) stay charged even if it is refused."""
        if key is None or not any(v is not None for v in (key.limits.rpm, key.limits.tpm,
                                                          key.limits.usd_per_day, key.limits.usd_per_month)):
            return None
        r = await self.limiter.check_and_reserve(key.key_id, key.limits, tokens_estimate=tokens, cost_estimate=0.0)
        r.min_tokens = min(input_tokens, tokens)
        return r

    async def reserve(self, key: ApiKey | None, reservation: Reservation | None, cost: float) -> None:
        """Add an admitted request's estimated cost (known once its engines are) to its
        reservation, against the key's USD budgets; raises 429 (or 403)."""
        if key is not None and reservation is not None:
            await self.limiter.extend(reservation, key.limits, cost_estimate=cost)

    async def settle(self, reservation: Reservation | None, tokens: int, cost: float) -> None:
        if reservation is not None and not reservation.settled:
            await self.limiter.settle(reservation, actual_tokens=tokens, actual_cost=cost)

    async def close(self) -> None:
        await self.limiter.close()
        self.keys.close()
