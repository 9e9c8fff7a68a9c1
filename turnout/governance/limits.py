"""Rate limits and budgets per API key: reserve before the call, settle after it.

    reservation = await limiter.check_and_reserve(key.key_id, key.limits,
                                                  tokens_estimate=..., cost_estimate=...)
    try:
        response = await engine.chat(...)
    finally:
        await limiter.settle(reservation, actual_tokens=..., actual_cost=...)   # 0, 0 on failure

Four counters per key, checked and incremented in one atomic step (all pass or none
moves):

* ``rpm``  requests in the current *fixed* minute window (``floor(epoch / 60)``),
* ``tpm``  tokens (the estimate, trued up on settle) in the same window,
* ``usd_day``   USD in the current UTC day, ``usd_month`` in the current UTC month.

Fixed windows are exact and cheap and identical in both backends; the price is that a
client can burst up to twice a per-minute limit across a window boundary.
``retry_after`` is the time until every window that refused the request has rolled over.

Budgets are exact under concurrency: a request reserves its *estimated* cost up front
(integer micro-dollars, so no float drift), so N concurrent requests against a budget that
admits K of them admit exactly K; ``settle`` then replaces the estimate by the actual cost.
A request whose estimate alone exceeds a limit can never pass and is refused with
``PermissionDenied`` rather than told to retry.

Backends: :class:`MemoryLimiter` (the embedded default: one process, counters in memory,
day and month spend seeded from the ledger at start-up, so budgets survive restarts; no
I/O on the request path), :class:`SQLiteLimiter` (the gateway's SQLite file, ``BEGIN
IMMEDIATE``; exact across processes on one host, at the cost of two or three write
transactions per request of a key with limits: what ``turnout serve --workers N`` uses without
Redis) and :class:`RedisLimiter` (one Lua script per step; exact across gateway replicas).
Windows are computed from the gateway's clock
(``now``), so replicas sharing Redis need synchronised clocks (NTP).
"""

from __future__ import annotations

import asyncio
import functools
import math
import sqlite3
import threading
import time as _time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from turnout import sqlitedb as sqlite
from turnout.errors import PermissionDenied, RateLimited
from turnout.governance.keys import Limits

KINDS = ("rpm", "tpm", "usd_day", "usd_month")
_WHAT = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "usd_day": "USD budget per day",
    "usd_month": "USD budget per month",
}
MICROS = 1_000_000


def to_micros(usd: float) -> int:
    """USD to integer micro-dollars, rounding up (3.0000000001 micros of float noise is 3)."""
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"cost must be a finite number >= 0, got {usd}")
    return math.ceil(round(usd * MICROS, 3))


@dataclass(frozen=True, slots=True)
class Windows:
    minute: str  # epoch minute, e.g. "29387520"
    day: str  # "2026-11-22" (UTC)
    month: str  # "2026-11" (UTC)
    retry_after: dict[str, float]  # seconds until each window rolls over

    @classmethod
    def at(cls, now: float) -> Windows:
        """The windows around ``now``, computed once per whole second (``retry_after`` is
        then up to a second long, which errs on the side of waiting)."""
        return _windows_at_second(int(now))

    @classmethod
    def _compute(cls, now: float) -> Windows:
        dt = datetime.fromtimestamp(now, UTC)
        minute = int(now // 60)
        next_day = datetime(dt.year, dt.month, dt.day, tzinfo=UTC) + timedelta(days=1)
        next_month = datetime(dt.year + dt.month // 12, dt.month % 12 + 1, 1, tzinfo=UTC)
        to_minute = (minute + 1) * 60 - now
        return cls(str(minute), dt.strftime("%Y-%m-%d"), dt.strftime("%Y-%m"), {
            "rpm": to_minute, "tpm": to_minute,
            "usd_day": next_day.timestamp() - now, "usd_month": next_month.timestamp() - now,
        })

    def of(self, kind: str) -> str:
        return self.minute if kind in ("rpm", "tpm") else self.day if kind == "usd_day" else self.month


@functools.lru_cache(maxsize=4)
def _windows_at_second(second: int) -> Windows:
    return Windows._compute(float(second))


@dataclass(slots=True)
class Reservation:
    """What one admitted request holds until it is settled."""

    key_id: str
    tokens: int
    cost_micros: int
    windows: Windows
    settled: bool = False
    min_tokens: int = 0  # what a request that used no tokens is settled at: the input the gateway read

    @property
    def cost_usd(self) -> float:
        return self.cost_micros / MICROS


def limit_values(limits: Limits) -> dict[str, int | None]:
    """Limits in counter units: requests, tokens, micro-dollars."""
    return {
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "usd_day": None if limits.usd_per_day is None else round(limits.usd_per_day * MICROS),
        "usd_month": None if limits.usd_per_month is None else round(limits.usd_per_month * MICROS),
    }


class Limiter(ABC):
    """One interface, two backends. All methods are coroutines and safe to call concurrently."""

    async def check_and_reserve(self, key_id: str, limits: Limits, *, tokens_estimate: int,
                                cost_estimate: float, now: float | None = None) -> Reservation:
        """Admit the request and reserve its estimate, or raise.

        Raises ``RateLimited`` (429, ``retry_after`` seconds; code ``rate_limit_exceeded`` for
        rpm/tpm, ``budget_exceeded`` for USD) or ``PermissionDenied`` (403, code
        ``request_exceeds_limit``) when the estimate alone is over a limit."""
        if tokens_estimate < 0:
            raise ValueError(f"tokens_estimate must be >= 0, got {tokens_estimate}")
        now = _time.time() if now is None else now
        tokens, micros = int(tokens_estimate), to_micros(cost_estimate)
        caps = limit_values(limits)
        need = {"rpm": 1, "tpm": tokens, "usd_day": micros, "usd_month": micros}
        never = [k for k in KINDS if caps[k] is not None and need[k] > caps[k]]  # type: ignore[operator]
        if never:
            raise PermissionDenied(
                "request can never fit: " + "; ".join(f"needs {_fmt(k, need[k])} but the key's {_WHAT[k]} is "
                                                      f"{_fmt(k, caps[k])}" for k in never),
                code="request_exceeds_limit")
        windows = Windows.at(now)
        failed = await self._reserve(key_id, caps, tokens, micros, windows)
        if failed:
            raise _over(key_id, failed, windows)
        return Reservation(key_id, tokens, micros, windows)

    async def extend(self, reservation: Reservation, limits: Limits, *, cost_estimate: float) -> None:
        """Add ``cost_estimate`` to an admitted request's reservation (its requests and tokens were
        counted when it was admitted, before any expensive step; its cost is known only once its
        engines are): checked against the USD budgets only, in the windows it was admitted in.
        Raises like :meth:`check_and_reserve`."""
        micros = to_micros(cost_estimate)
        caps = {**limit_values(limits), "rpm": None, "tpm": None}
        never = [k for k in ("usd_day", "usd_month") if caps[k] is not None and micros > caps[k]]  # type: ignore[operator]
        if never:
            raise PermissionDenied("request can never fit: " + "; ".join(
                f"needs {_fmt(k, micros)} but the key's {_WHAT[k]} is {_fmt(k, caps[k])}" for k in never),
                code="request_exceeds_limit")
        failed = await self._reserve(reservation.key_id, caps, 0, micros, reservation.windows, requests=0)
        if failed:
            raise _over(reservation.key_id, failed, reservation.windows)
        reservation.cost_micros += micros

    async def settle(self, reservation: Reservation, *, actual_tokens: int, actual_cost: float) -> None:
        """Replace the reservation's estimates by what the request really used (0, 0 if it failed).
        The request itself still counts towards requests per minute."""
        if reservation.settled:
            raise RuntimeError(f"reservation for {reservation.key_id} was already settled")
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must be >= 0, got {actual_tokens}")
        reservation.settled = True
        d_tokens = (int(actual_tokens) or reservation.min_tokens) - reservation.tokens
        d_micros = to_micros(actual_cost) - reservation.cost_micros
        if d_tokens or d_micros:
            await self._adjust(reservation.key_id, reservation.windows, d_tokens, d_micros)

    async def usage(self, key_id: str, now: float | None = None) -> dict[str, int]:
        """Current counters: requests and tokens this minute, micro-dollars today and this month."""
        return await self._read(key_id, Windows.at(_time.time() if now is None else now))

    @abstractmethod
    async def _reserve(self, key_id: str, caps: dict[str, int | None], tokens: int, micros: int,
                       windows: Windows, requests: int = 1) -> list[str]:
        """Atomically: if every counter stays within its cap, add to all and return []; else
        change nothing and return the kinds that would overflow. ``requests`` 0: an extension of
        an admitted request (``windows`` may then be a minute old; nothing is dropped)."""

    @abstractmethod
    async def _adjust(self, key_id: str, windows: Windows, d_tokens: int, d_micros: int) -> None: ...

    @abstractmethod
    async def _read(self, key_id: str, windows: Windows) -> dict[str, int]: ...

    @abstractmethod
    async def close(self) -> None: ...


def _over(key_id: str, failed: list[str], windows: Windows) -> RateLimited:
    retry = max(windows.retry_after[k] for k in failed)
    budget = any(k.startswith("usd") for k in failed)
    return RateLimited(f"API key {key_id} is over its {' and '.join(_WHAT[k] for k in failed)}; "
                       f"retry in {retry:.0f} s", retry_after=retry,
                       code="budget_exceeded" if budget else "rate_limit_exceeded")


def _fmt(kind: str, value: int | None) -> str:
    if value is None:
        return "unlimited"
    return (f"${value / MICROS:.6g}" if kind.startswith("usd")
            else f"{value:,} {'requests' if kind == 'rpm' else 'tokens'}")


# --- SQLite -----------------------------------------------------------------------------------

MIGRATIONS: list[sqlite.Migration] = [
    ("0001_counters", [
        """CREATE TABLE limits_counters (
               key_id TEXT NOT NULL,
               kind TEXT NOT NULL,
               window TEXT NOT NULL,
               value INTEGER NOT NULL,
               PRIMARY KEY (key_id, kind, window)) WITHOUT ROWID""",
    ]),
]


class SQLiteLimiter(Limiter):
    """Counters in the gateway's SQLite file (table ``limits_counters``).

    Each step is one ``BEGIN IMMEDIATE`` transaction, taken in turn with the ledger's writer
    (``sqlitedb.WriteLock``). When the file's write lock is free the step runs at once on the
    caller's thread (tens of microseconds; a hop to a worker thread costs more than the
    transaction); when another process or thread holds it, the step waits in a worker thread, so
    the event loop never waits on a lock.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else sqlite.default_db_path()
        self._conn = sqlite.connect(self.path)
        self._lock = threading.Lock()
        sqlite.migrate(self._conn, "limits_migrations", MIGRATIONS)
        self._now = sqlite.connect(self.path)  # the same file, never waiting: SQLITE_BUSY at once
        self._now.execute("PRAGMA busy_timeout = 0")
        self._turn = sqlite.WriteLock(self.path)  # the writers' queue between processes

    async def _write(self, step: Callable[..., Any], *args: Any) -> Any:
        """``step(conn, *args)`` in a write transaction: here if the write lock is free, else in a thread."""
        if self._lock.acquire(blocking=False):
            try:
                done, result = False, None
                if self._turn.acquire(blocking=False):
                    try:
                        done, result = self._try_now(step, *args)
                    finally:
                        self._turn.release()
            finally:
                self._lock.release()
            if done:
                return result
        return await asyncio.to_thread(self._wait_and_write, step, *args)

    def _try_now(self, step: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        c = self._now
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # busy: another process is writing
            return False, None
        try:
            result = step(c, *args)
            c.execute("COMMIT")
        except sqlite3.OperationalError:  # the commit was busy (a checkpoint): undone, so done again in a thread
            c.execute("ROLLBACK")
            return False, None
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return True, result

    def _wait_and_write(self, step: Callable[..., Any], *args: Any) -> Any:
        with self._lock, self._turn.held(), sqlite.immediate(self._conn) as c:
            return step(c, *args)

    def seed(self, spent: dict[tuple[str, str, str], int]) -> None:
        """Start day and month windows ((key_id, kind, window) -> micro-dollars) from what the ledger
        says was spent, keeping a counter that is already higher (requests in flight, or another
        worker's seed): every worker of a gateway seeds at start-up, and none lowers a counter."""
        with self._lock, sqlite.immediate(self._conn) as c:
            c.executemany("INSERT INTO limits_counters (key_id, kind, window, value) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (key_id, kind, window) DO UPDATE SET value = MAX(value, excluded.value)",
                          [(*slot, value) for slot, value in spent.items()])

    async def _reserve(self, key_id: str, caps: dict[str, int | None], tokens: int, micros: int,
                       windows: Windows, requests: int = 1) -> list[str]:
        failed: list[str] = await self._write(self._reserve_in, key_id, caps, tokens, micros, windows, requests)
        return failed

    def _reserve_in(self, c: sqlite3.Connection, key_id: str, caps: dict[str, int | None], tokens: int,
                    micros: int, windows: Windows, requests: int) -> list[str]:
        add = {"rpm": requests, "tpm": tokens, "usd_day": micros, "usd_month": micros}
        used = self._counters(c, key_id, windows)
        failed = [k for k in KINDS if caps[k] is not None and used[k] + add[k] > caps[k]]  # type: ignore[operator]
        if failed:
            return failed
        if requests:  # minute windows other than the current one are over: drop them as we go
            c.execute("DELETE FROM limits_counters WHERE key_id = ? AND kind IN ('rpm', 'tpm') AND window <> ?",
                      (key_id, windows.minute))
        c.executemany("INSERT INTO limits_counters (key_id, kind, window, value) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (key_id, kind, window) DO UPDATE SET value = value + excluded.value",
                      [(key_id, k, windows.of(k), add[k]) for k in KINDS if add[k] or requests])
        return []

    async def _adjust(self, key_id: str, windows: Windows, d_tokens: int, d_micros: int) -> None:
        await self._write(self._adjust_in, key_id, windows, d_tokens, d_micros)

    @staticmethod
    def _adjust_in(c: sqlite3.Connection, key_id: str, windows: Windows, d_tokens: int, d_micros: int) -> None:
        # UPDATE only: a window already dropped stays dropped
        c.executemany("UPDATE limits_counters SET value = MAX(0, value + ?) "
                      "WHERE key_id = ? AND kind = ? AND window = ?",
                      [(delta, key_id, kind, windows.of(kind))
                       for kind, delta in (("tpm", d_tokens), ("usd_day", d_micros), ("usd_month", d_micros)) if delta])

    async def _read(self, key_id: str, windows: Windows) -> dict[str, int]:
        def read() -> dict[str, int]:
            with self._lock:
                return self._counters(self._conn, key_id, windows)
        return await asyncio.to_thread(read)

    @staticmethod
    def _counters(c: Any, key_id: str, windows: Windows) -> dict[str, int]:
        rows = c.execute("SELECT kind, value FROM limits_counters WHERE key_id = ? AND "
                         "((kind IN ('rpm', 'tpm') AND window = ?) OR (kind = 'usd_day' AND window = ?) OR "
                         "(kind = 'usd_month' AND window = ?))",
                         (key_id, windows.minute, windows.day, windows.month)).fetchall()
        used = dict.fromkeys(KINDS, 0)
        used.update(dict(rows))
        return used

    async def close(self) -> None:
        self._now.close()
        self._conn.close()
        self._turn.close()


class MemoryLimiter(Limiter):
    """Counters in this process. The event loop runs each step without yielding, so a
    check-and-increment is atomic without locks. Only for a single gateway process."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        self._minute = ""

    def seed(self, key_id: str, kind: str, window: str, value: int) -> None:
        """Start a day or month window from what the ledger says was already spent."""
        self._counts[(key_id, kind, window)] = value

    async def _reserve(self, key_id: str, caps: dict[str, int | None], tokens: int, micros: int,
                       windows: Windows, requests: int = 1) -> list[str]:
        if requests and windows.minute != self._minute:  # drop finished minute windows (day/month stay until restart)
            self._minute = windows.minute
            self._counts = {k: v for k, v in self._counts.items()
                            if k[1] not in ("rpm", "tpm") or k[2] == windows.minute}
        add = {"rpm": requests, "tpm": tokens, "usd_day": micros, "usd_month": micros}
        slots = {k: (key_id, k, windows.of(k)) for k in KINDS}
        failed = [k for k in KINDS if caps[k] is not None and self._counts.get(slots[k], 0) + add[k] > caps[k]]  # type: ignore[operator]
        if not failed:
            for k in KINDS:
                self._counts[slots[k]] = self._counts.get(slots[k], 0) + add[k]
        return failed

    async def _adjust(self, key_id: str, windows: Windows, d_tokens: int, d_micros: int) -> None:
        for kind, delta in (("tpm", d_tokens), ("usd_day", d_micros), ("usd_month", d_micros)):
            slot = (key_id, kind, windows.of(kind))
            if slot in self._counts:
                self._counts[slot] = max(0, self._counts[slot] + delta)

    async def _read(self, key_id: str, windows: Windows) -> dict[str, int]:
        return {k: self._counts.get((key_id, k, windows.of(k)), 0) for k in KINDS}

    async def close(self) -> None:
        self._counts.clear()


# --- Redis ------------------------------------------------------------------------------------

_RESERVE_LUA = """
-- KEYS: rpm, tpm, usd_day, usd_month counters
-- ARGV: 4 caps (-1 = unlimited), tokens, micros, minute ttl, day ttl, month ttl, requests
local add = {tonumber(ARGV[10]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[6])}
local failed = {}
for i = 1, 4 do
  local cap = tonumber(ARGV[i])
  if cap >= 0 and tonumber(redis.call('GET', KEYS[i]) or '0') + add[i] > cap then
    table.insert(failed, i)
  end
end
if #failed > 0 then return failed end
local ttl = {ARGV[7], ARGV[7], ARGV[8], ARGV[9]}
for i = 1, 4 do
  redis.call('INCRBY', KEYS[i], add[i])
  redis.call('EXPIRE', KEYS[i], ttl[i])
end
return failed
"""

_ADJUST_LUA = """
-- KEYS: tpm, usd_day, usd_month; ARGV: token delta, micro-dollar delta. Expired windows stay gone.
local delta = {tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[2])}
for i = 1, 3 do
  if delta[i] ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('INCRBY', KEYS[i], delta[i])
    if v < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 0
"""

_TTL = {"rpm": 120, "tpm": 120, "usd_day": 2 * 86_400, "usd_month": 62 * 86_400}


class RedisLimiter(Limiter):
    """Counters in Redis (``pip install redis``), shared by every gateway replica.

    Keys are ``{prefix}:{<key_id>}:<kind>:<window>``; the braces keep one key's counters in
    one Redis Cluster slot, as a multi-key Lua script requires."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "turnout:limits",
                 client: Any = None) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self._redis = client if client is not None else aioredis.Redis.from_url(url)
        self._reserve_script = self._redis.register_script(_RESERVE_LUA)
        self._adjust_script = self._redis.register_script(_ADJUST_LUA)

    def _key(self, key_id: str, kind: str, windows: Windows) -> str:
        return f"{self.prefix}:{{{key_id}}}:{kind}:{windows.of(kind)}"

    async def _reserve(self, key_id: str, caps: dict[str, int | None], tokens: int, micros: int,
                       windows: Windows, requests: int = 1) -> list[str]:
        keys = [self._key(key_id, k, windows) for k in KINDS]
        args: list[int] = [-1 if (cap := caps[k]) is None else cap for k in KINDS]
        args += [tokens, micros, _TTL["rpm"], _TTL["usd_day"], _TTL["usd_month"], requests]
        failed = await self._reserve_script(keys=keys, args=args)
        return [KINDS[int(i) - 1] for i in failed]

    async def _adjust(self, key_id: str, windows: Windows, d_tokens: int, d_micros: int) -> None:
        keys = [self._key(key_id, k, windows) for k in ("tpm", "usd_day", "usd_month")]
        await self._adjust_script(keys=keys, args=[d_tokens, d_micros])

    async def _read(self, key_id: str, windows: Windows) -> dict[str, int]:
        values = await self._redis.mget([self._key(key_id, k, windows) for k in KINDS])
        return {k: int(v or 0) for k, v in zip(KINDS, values)}

    async def close(self) -> None:
        await self._redis.aclose()


def open_limiter(*, redis_url: str | None = None, db: str | Path | None = None,
                 prefix: str = "turnout:limits") -> Limiter:
    """Redis when ``redis_url`` is given, else SQLite at ``db`` (default ``$TURNOUT_DB``)."""
    if redis_url:
        return RedisLimiter(redis_url, prefix=prefix)
    return SQLiteLimiter(db)
