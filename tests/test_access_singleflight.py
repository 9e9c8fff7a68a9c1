"""API-key lookups when a cached entry lapses: the requests that miss the cache together share one
lookup in the key store (no thundering herd), a failing lookup fails them all and is not cached,
and a revocation still empties the cache (here and, through the key epoch, in another worker).
Real parts: the SQLite key store, its ``lookup_by_plaintext`` wrapped only to count the calls and
to widen the window in which requests overlap."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from turnout.errors import AuthenticationFailed
from turnout.governance.access import Access
from turnout.governance.epoch import KeyEpoch
from turnout.governance.key_store import SQLiteKeyStore
from turnout.governance.keys import ApiKey
from turnout.governance.limits import MemoryLimiter


class Counted:
    """The store's own lookup, counted, each call held ``hold`` seconds after it read the store;
    ``fail`` makes the next calls raise (a store that is down)."""

    def __init__(self, store: SQLiteKeyStore, hold: float = 0.2) -> None:
        self.real: Callable[[str], ApiKey | None] = store.lookup_by_plaintext
        self.hold, self.calls, self.fail = hold, 0, 0
        self.lock = threading.Lock()
        self.reading = threading.Event()  # set once a call has read the store
        store.lookup_by_plaintext = self  # type: ignore[method-assign]

    def __call__(self, plaintext: str) -> ApiKey | None:
        with self.lock:
            self.calls += 1
            failing = self.fail > 0
            self.fail -= failing
        if failing:
            time.sleep(self.hold)
            raise sqlite3.OperationalError("database is locked")
        key = self.real(plaintext)
        self.reading.set()
        time.sleep(self.hold)
        return key


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteKeyStore]:
    with SQLiteKeyStore(tmp_path / "keys.sqlite") as keys:
        yield keys


def test_fifty_requests_after_expiry_share_one_lookup(store: SQLiteKeyStore) -> None:
    made = store.create("acme")
    other = store.create("acme")
    counted = Counted(store)
    access = Access(store, MemoryLimiter(), ttl=0.3)

    async def go() -> None:
        assert (await access.identify(made.plaintext)) is not None
        assert counted.calls == 1
        assert (await access.identify(made.plaintext)) is not None
        assert counted.calls == 1  # cached
        await asyncio.sleep(0.4)  # the entry lapses
        found = await asyncio.gather(*(access.identify(made.plaintext) for _ in range(50)),
                                     *(access.identify(other.plaintext) for _ in range(5)))
        assert [k.key_id for k in found if k is not None] == [made.key.key_id] * 50 + [other.key.key_id] * 5
        assert counted.calls == 3  # one lookup per key, not one per request
        assert not access._inflight  # nothing left in flight once done
        assert (await access.identify(made.plaintext)) is not None
        assert counted.calls == 3  # and the shared lookup was cached

    asyncio.run(go())


def test_a_failing_lookup_fails_every_waiter_and_is_not_cached(store: SQLiteKeyStore) -> None:
    made = store.create("acme")
    counted = Counted(store)
    counted.fail = 1
    access = Access(store, MemoryLimiter())

    async def go() -> None:
        results = await asyncio.gather(*(access.identify(made.plaintext) for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, sqlite3.OperationalError) and "locked" in str(r) for r in results), results
        assert counted.calls == 1
        key = await access.identify(made.plaintext)  # the failure was not remembered: looked up again
        assert key is not None and key.key_id == made.key.key_id
        assert counted.calls == 2

    asyncio.run(go())


def test_a_caller_that_goes_away_does_not_cancel_the_others(store: SQLiteKeyStore) -> None:
    made = store.create("acme")
    counted = Counted(store)
    access = Access(store, MemoryLimiter())

    async def go() -> None:
        first = asyncio.create_task(access.identify(made.plaintext))
        second = asyncio.create_task(access.identify(made.plaintext))
        await asyncio.sleep(0.05)
        first.cancel()  # its client disconnected
        key = await second
        assert key is not None and key.key_id == made.key.key_id
        assert first.cancelled() and counted.calls == 1

    asyncio.run(go())


def test_a_revocation_during_a_lookup_is_not_hidden_by_the_cache(store: SQLiteKeyStore) -> None:
    made = store.create("acme")
    counted = Counted(store)
    access = Access(store, MemoryLimiter(), ttl=60.0)  # a cached stale key would outlive the test

    async def go() -> None:
        early = asyncio.create_task(access.identify(made.plaintext))
        await asyncio.to_thread(counted.reading.wait, 10)  # the lookup read the key while it was active
        store.revoke(made.key.key_id)
        access.forget(made.key.key_id)  # what the gateway does after revoking through its API
        assert (await early) is not None  # that request came before the revocation
        with pytest.raises(AuthenticationFailed) as refused:
            await access.identify(made.plaintext)  # every later one is refused
        assert refused.value.code == "key_revoked"
        assert counted.calls == 2

    asyncio.run(go())


def test_a_revocation_through_another_worker_still_empties_the_cache(store: SQLiteKeyStore, tmp_path: Path) -> None:
    made = store.create("acme")
    kept = store.create("acme")
    counted = Counted(store, hold=0.0)
    epoch = KeyEpoch(tmp_path / "keys.epoch")
    here, there = (Access(store, MemoryLimiter(), ttl=60.0, epoch=KeyEpoch(tmp_path / "keys.epoch")) for _ in "ab")

    async def go() -> None:
        for access in (here, there):
            for made_key in (made, kept):
                assert (await access.identify(made_key.plaintext)) is not None
        assert counted.calls == 4  # each worker cached both keys
        store.revoke(made.key.key_id)
        here.forget(made.key.key_id)  # revoked through this worker: the epoch is bumped
        for access in (here, there):
            with pytest.raises(AuthenticationFailed) as refused:
                await access.identify(made.plaintext)
            assert refused.value.code == "key_revoked"
            assert (await access.identify(kept.plaintext)) is not None
        assert epoch.value() == 1

    asyncio.run(go())
    epoch.close()
