"""API keys (hashed at rest, revocable, route-scoped) and limits/budgets on real SQLite and
Redis: rate limits with retry_after, budgets exact under concurrency within one process
and across two OS processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runcli import run_cli
from turnout.errors import AuthenticationFailed, NotFound, PermissionDenied, RateLimited
from turnout.governance.key_store import SQLiteKeyStore
from turnout.governance.keys import Limits, hash_key
from turnout.governance.limits import Limiter, MemoryLimiter, RedisLimiter, Reservation, SQLiteLimiter, Windows

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("TURNOUT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = 1_790_000_000.0  # a fixed instant, 20 s into a minute window (1_790_000_000 % 60 == 20)


# --- keys -------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteKeyStore]:
    with SQLiteKeyStore(tmp_path / "turnout.sqlite") as s:
        yield s


def test_key_is_hashed_at_rest_and_shown_once(store: SQLiteKeyStore, tmp_path: Path) -> None:
    new = store.create("acme", routes=["fast", "smart"], limits=Limits(rpm=60, usd_per_day=5))
    assert new.plaintext.startswith("tk-") and len(new.plaintext) == 46
    found = store.lookup_by_plaintext(new.plaintext)
    assert found is not None and found.key_id == new.key.key_id and found.routes == ("fast", "smart")
    assert found.limits == Limits(rpm=60, usd_per_day=5)
    # nothing on disk holds the plaintext (main file and WAL); the hash is there
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("turnout.sqlite"))
    assert new.plaintext.encode() not in on_disk
    assert new.plaintext[3:].encode() not in on_disk
    assert hash_key(new.plaintext).encode() in on_disk
    # listing never shows it either
    assert new.plaintext not in repr(store.list())


def test_authenticate_revoke_and_routes(store: SQLiteKeyStore) -> None:
    new = store.create("acme", routes=["fast"])
    other = store.create("globex")
    assert store.authenticate(new.plaintext, route="fast").tenant == "acme"
    assert store.authenticate(other.plaintext, route="anything").tenant == "globex"  # empty = all routes
    with pytest.raises(PermissionDenied, match="may not use route 'smart'"):
        store.authenticate(new.plaintext, route="smart")
    for bad in (None, "", "tk-nope", new.plaintext[:-1] + ("A" if new.plaintext[-1] != "A" else "B")):
        with pytest.raises(AuthenticationFailed):
            store.authenticate(bad)
    revoked = store.revoke(new.key.key_id)
    assert not revoked.active and revoked.revoked_at
    with pytest.raises(AuthenticationFailed, match="revoked"):
        store.authenticate(new.plaintext)
    assert store.revoke(new.key.key_id).revoked_at == revoked.revoked_at  # idempotent
    assert [k.key_id for k in store.list(include_revoked=False)] == [other.key.key_id]
    with pytest.raises(NotFound):
        store.revoke("key_missing")


def test_bad_tenant_and_limits_are_refused(store: SQLiteKeyStore) -> None:
    with pytest.raises(ValueError, match="tenant"):
        store.create("a tenant with spaces")
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=-1)


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.sqlite")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("keys", "--db", db, *args, cwd=ROOT)

    made = cli("create", "--tenant", "acme", "--routes", "fast,smart", "--rpm", "60", "--tpm", "1000",
               "--usd-day", "5", "--usd-month", "100", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["key"].startswith("tk-") and created["routes"] == ["fast", "smart"]
    listed = cli("list", "--json")
    assert listed.returncode == 0 and created["key"] not in listed.stdout
    (row,) = json.loads(listed.stdout)
    assert row["key_id"] == created["key_id"] and row["limits"]["usd_per_month"] == 100 and row["active"]
    assert cli("revoke", created["key_id"]).returncode == 0
    assert json.loads(cli("list", "--json").stdout)[0]["active"] is False
    assert cli("revoke", "key_nope").returncode == 1
    bad = cli("create", "--tenant", "acme", "--usd-day", "-1")
    assert bad.returncode == 2 and "usd_per_day" in bad.stderr
    # the key printed by the CLI is the one stored, and it is now revoked
    with SQLiteKeyStore(db) as s, pytest.raises(AuthenticationFailed, match="revoked"):
        s.authenticate(created["key"])


# --- limiters ---------------------------------------------------------------------------------

def _redis_prefix() -> str:
    return f"turnout-test:{uuid.uuid4().hex[:12]}"


async def _redis_or_skip(prefix: str) -> RedisLimiter:
    pytest.importorskip("redis", reason="Redis tests need the redis package: pip install redis")
    limiter = RedisLimiter(REDIS_URL, prefix=prefix)
    try:
        await limiter._redis.ping()
    except Exception as exc:  # noqa: BLE001
        await limiter.close()
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return limiter


async def _cleanup_redis(limiter: RedisLimiter) -> None:
    keys = [k async for k in limiter._redis.scan_iter(match=f"{limiter.prefix}:*")]
    if keys:
        await limiter._redis.delete(*keys)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _try(lim: Limiter, key: str, limits: Limits, tokens: int = 10, cost: float = 0.0,
               now: float = T0) -> Reservation | RateLimited:
    try:
        return await lim.check_and_reserve(key, limits, tokens_estimate=tokens, cost_estimate=cost, now=now)
    except RateLimited as exc:
        return exc


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_requests_per_minute_with_retry_after(backend: str, tmp_path: Path) -> None:
    async def body(lim: Limiter) -> None:
        limits = Limits(rpm=3)
        for _ in range(3):
            assert isinstance(await _try(lim, "k", limits), Reservation)
        refused = await _try(lim, "k", limits, now=T0 + 5)
        assert isinstance(refused, RateLimited)
        assert refused.retry_after == pytest.approx(35.0)  # window started at T0 - 20, ends at T0 + 40
        assert refused.headers["Retry-After"] == "35" and refused.code == "rate_limit_exceeded"
        assert refused.status == 429 and "requests per minute" in refused.message
        # other keys have their own windows; the next minute admits again
        assert isinstance(await _try(lim, "other", limits, now=T0 + 5), Reservation)
        assert isinstance(await _try(lim, "k", limits, now=T0 + 40), Reservation)

    run(_with_limiter(backend, tmp_path, body))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_tokens_per_minute_reserve_and_settle(backend: str, tmp_path: Path) -> None:
    async def body(lim: Limiter) -> None:
        limits = Limits(tpm=1000)
        a = await _try(lim, "k", limits, tokens=600)
        assert isinstance(a, Reservation)
        refused = await _try(lim, "k", limits, tokens=500)
        assert isinstance(refused, RateLimited) and "tokens per minute" in refused.message
        await lim.settle(a, actual_tokens=200, actual_cost=0)  # true-up frees 400 tokens
        assert (await lim.usage("k", now=T0))["tpm"] == 200
        assert isinstance(await _try(lim, "k", limits, tokens=500), Reservation)
        with pytest.raises(PermissionDenied, match="can never fit"):
            await lim.check_and_reserve("k", limits, tokens_estimate=1001, cost_estimate=0, now=T0)
        with pytest.raises(RuntimeError, match="already settled"):
            await lim.settle(a, actual_tokens=1, actual_cost=0)

    run(_with_limiter(backend, tmp_path, body))


async def _with_limiter(backend: str, tmp_path: Path, body) -> None:  # type: ignore[no-untyped-def]
    if backend == "memory":
        await body(MemoryLimiter())
        return
    if backend == "sqlite":
        lim: Limiter = SQLiteLimiter(tmp_path / "turnout.sqlite")
        try:
            await body(lim)
        finally:
            await lim.close()
        return
    redis_lim = await _redis_or_skip(_redis_prefix())
    try:
        await body(redis_lim)
    finally:
        await _cleanup_redis(redis_lim)
        await redis_lim.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_budget_exact_under_concurrency_then_settled(backend: str, tmp_path: Path) -> None:
    async def body(lim: Limiter) -> None:
        limits = Limits(usd_per_day=1.0)  # admits exactly 10 requests estimated at $0.10
        results = await asyncio.gather(*(_try(lim, "k", limits, cost=0.10) for _ in range(50)))
        admitted = [r for r in results if isinstance(r, Reservation)]
        refused = [r for r in results if isinstance(r, RateLimited)]
        assert (len(admitted), len(refused)) == (10, 40)
        assert all(r.code == "budget_exceeded" for r in refused)
        # T0 is 2026-09-21 14:13:20 UTC: 35200 s to midnight
        assert refused[0].retry_after == pytest.approx(35200.0)
        # each really cost $0.03: $0.70 comes back, exactly 7 more fit
        await asyncio.gather(*(lim.settle(r, actual_tokens=10, actual_cost=0.03) for r in admitted))
        assert (await lim.usage("k", now=T0))["usd_day"] == 300_000
        again = await asyncio.gather(*(_try(lim, "k", limits, cost=0.10) for _ in range(50)))
        assert sum(isinstance(r, Reservation) for r in again) == 7
        # the next UTC day has a fresh daily budget
        assert isinstance(await _try(lim, "k", limits, cost=0.10, now=T0 + 35200), Reservation)

    run(_with_limiter(backend, tmp_path, body))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_monthly_budget_spans_days(backend: str, tmp_path: Path) -> None:
    async def body(lim: Limiter) -> None:
        limits = Limits(usd_per_day=1.0, usd_per_month=1.5)
        day1 = await asyncio.gather(*(_try(lim, "k", limits, cost=0.25) for _ in range(8)))
        assert sum(isinstance(r, Reservation) for r in day1) == 4  # $1.00: the daily cap
        day2 = await asyncio.gather(*(_try(lim, "k", limits, cost=0.25, now=T0 + 86_400) for _ in range(8)))
        admitted2 = sum(isinstance(r, Reservation) for r in day2)
        assert admitted2 == 2  # $0.50 left this month
        refused = next(r for r in day2 if isinstance(r, RateLimited))
        assert "per month" in refused.message and refused.retry_after > 86_400  # October 1st is days away

    run(_with_limiter(backend, tmp_path, body))


HAMMER = f"""
import asyncio, sys, time
from turnout.errors import RateLimited
from turnout.governance.keys import Limits
from turnout.governance.limits import RedisLimiter, SQLiteLimiter

backend, target, key, n, start_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])

async def main():
    lim = RedisLimiter(target, prefix=key) if backend == "redis" else SQLiteLimiter(target)
    limits = Limits(usd_per_day=2.37)
    admitted = 0
    async def worker():
        nonlocal admitted
        for _ in range(n // 4):
            try:
                await lim.check_and_reserve("shared", limits, tokens_estimate=1, cost_estimate=0.01, now={T0!r})
                admitted += 1
            except RateLimited:
                pass
    await lim.usage("shared")  # connect before the start line
    while time.time() < start_at:  # spin: both processes leave the start line within microseconds
        pass
    await asyncio.gather(*(worker() for _ in range(4)))
    await lim.close()
    print(admitted)

asyncio.run(main())
"""


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_two_processes_share_one_budget_exactly(backend: str, tmp_path: Path) -> None:
    prefix = _redis_prefix()
    if backend == "redis":
        run(_with_limiter("redis", tmp_path, lambda lim: asyncio.sleep(0)))  # skips if Redis is down
        target = REDIS_URL
    else:
        target = str(tmp_path / "turnout.sqlite")
        run(SQLiteLimiter(target).close())  # create the schema before the race
    start_at = time.time() + 1.5  # both processes are up and import-complete by then
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, backend, target, prefix, "200", str(start_at)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    counts = [int(o.strip()) for o, _ in outs]
    assert sum(counts) == 237, counts  # $2.37 / $0.01, out of 400 attempts
    # 237 > 200 attempts of one process: both processes were admitted some (at least 37 each)
    assert min(counts) >= 37
    if backend == "redis":
        async def cleanup() -> None:
            lim = RedisLimiter(REDIS_URL, prefix=prefix)
            await _cleanup_redis(lim)
            await lim.close()
        run(cleanup())


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_admitted_then_extended_by_its_cost(backend: str, tmp_path: Path) -> None:
    """Issue 23, H1: a request is counted (requests, tokens) when it is admitted, before any
    expensive step; its cost is added once its engines are known, against the USD budgets only,
    in the windows it was admitted in (a minute later, nothing of the new minute is dropped)."""
    async def body(lim: Limiter) -> None:
        limits = Limits(rpm=2, usd_per_day=1.0)
        a = await _try(lim, "k", limits, tokens=100)
        assert isinstance(a, Reservation) and a.cost_micros == 0
        await lim.extend(a, limits, cost_estimate=0.6)
        assert a.cost_micros == 600_000 and (await lim.usage("k", now=T0))["usd_day"] == 600_000
        b = await _try(lim, "k", limits, tokens=100, now=T0 + 1)
        assert isinstance(b, Reservation)
        with pytest.raises(RateLimited, match="USD budget per day") as over:
            await lim.extend(b, limits, cost_estimate=0.6)
        assert over.value.code == "budget_exceeded"
        with pytest.raises(PermissionDenied, match="can never fit"):
            await lim.extend(b, limits, cost_estimate=1.5)
        used = await lim.usage("k", now=T0 + 1)
        assert used["rpm"] == 2 and used["usd_day"] == 600_000  # b stays counted, its cost was not added
        # b refused later: settled at its input (min_tokens), never below
        b.min_tokens = 30
        await lim.settle(b, actual_tokens=0, actual_cost=0)
        assert (await lim.usage("k", now=T0 + 1))["tpm"] == 100 + 30
        # a's extension in its own (now old) minute window keeps the new minute's counts
        c = await _try(lim, "k", limits, tokens=5, now=T0 + 60)
        assert isinstance(c, Reservation)
        await lim.extend(a, limits, cost_estimate=0.0)
        assert (await lim.usage("k", now=T0 + 60))["rpm"] == 1

    run(_with_limiter(backend, tmp_path, body))


def test_sqlite_seed_from_the_ledger_never_lowers_a_counter(tmp_path: Path) -> None:
    """Every worker of `turnout serve --workers N` seeds today's spend from the ledger at start-up:
    a seed raises a counter to the ledger's figure, never lowers one already higher."""
    async def body() -> None:
        first, second = SQLiteLimiter(tmp_path / "t.sqlite"), SQLiteLimiter(tmp_path / "t.sqlite")
        w = Windows.at(T0)
        first.seed({("k", "usd_day", w.day): 100_000, ("k", "usd_month", w.month): 100_000})
        second.seed({("k", "usd_day", w.day): 40_000})  # a worker that read the ledger before the last rows
        assert (await second.usage("k", now=T0))["usd_day"] == 100_000
        limits = Limits(usd_per_day=0.25)
        assert isinstance(await _try(second, "k", limits, cost=0.15, now=T0), Reservation)
        refused = await _try(first, "k", limits, cost=0.01, now=T0)  # 0.25 spent, on either connection
        assert isinstance(refused, RateLimited) and refused.code == "budget_exceeded"
        second.seed({("k", "usd_day", w.day): 300_000})  # a ledger that holds more than the counter: it wins
        assert (await first.usage("k", now=T0))["usd_day"] == 300_000
        await first.close()
        await second.close()

    run(body())
