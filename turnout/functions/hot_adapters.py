"""The canary engine's adapter, from the registry, at run time (issue 26 item 5): no restart.

The canary engine (``tune.canary.engine``: a llamacpp engine with no ``adapter:`` of its own) answers
with whatever adapter the registry puts live on it. Every ``tune.canary.reload_s`` (at least
:data:`MIN_PERIOD_S`) the gateway reads the registry's live rows (``canary`` or ``promoted``; through the
ledger's read-only query) and, when the newest one naming that engine is another adapter than the one it
answers with, the engine checks the folder exactly as it checks a configured adapter at start (every
file's sha256, its own weights, a signature by ``adapter_public_keys``) and swaps it in between two
requests (``LlamaCppEngine.use_adapter``; checked and loaded off the event loop). When no live row names
it any more (rolled back, retired), it takes the adapter off and answers with its base weights.

An adapter the engine refuses is never served: the engine goes on as it was, the log says why, and the
gateway rolls the adapter back in the registry (``by: gateway``, the engine's reason in the audit chain),
so ``turnout adapters show`` says why, the watcher stops watching it, and every replica stops trying.
A registry that cannot be read leaves the engine as it is (a database hiccup is not a rollback).

:class:`turnout.functions.canary.Canaries` asks :meth:`HotAdapters.serving` before it gives a canary
variant on such an engine traffic: only once the engine answers with that very adapter. A request given
the variant just before a swap may still be answered by the adapter that follows (one engine, one
adapter at a time; two functions live on one canary engine: the newest row wins, the other waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout.adapter_manifest import AdapterRefused
from turnout.engines.base import Engine
from turnout.errors import EngineError
from turnout.functions.experiment import Query

if TYPE_CHECKING:
    from turnout.engines.llamacpp import LlamaCppEngine

log = logging.getLogger("turnout.functions")

MIN_PERIOD_S = 0.2
_SQL = ("SELECT id, path, engine FROM adapters WHERE status IN ('canary', 'promoted') "
        "ORDER BY updated_ts DESC, id")


class HotAdapters:
    """Keeps each hot engine answering with the adapter the registry puts live on it."""

    def __init__(self, query: Query | None, engines: dict[str, LlamaCppEngine], period_s: float,
                 record: Callable[[str, str, str], None] | None = None) -> None:
        self.query = query
        self.hot = engines
        self.engines = set(engines)
        self.period_s = max(period_s, MIN_PERIOD_S)
        self.record = record            # (adapter id, engine, reason): the registry's rollback
        self.generation = 0             # bumped at each swap: Canaries' cached answers are stale
        self._refused: set[str] = set()
        self._warned: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._swap: asyncio.Future[Any] | None = None  # a swap in flight: close waits for it

    @classmethod
    def build(cls, cfg: Any, engines: dict[str, Engine], query: Query | None) -> HotAdapters | None:
        """The gateway's: the canary engine when it is a llamacpp engine without ``adapter:``; else None."""
        name = cfg.tune.canary.engine
        if not name or query is None:
            return None
        from turnout.engines.llamacpp import LlamaCppEngine  # numpy: only for a gateway with a canary engine

        engine: Any = engines.get(name)
        while engine is not None and not isinstance(engine, LlamaCppEngine):
            engine = getattr(engine, "inner", None)  # inside its ResilientEngine (turnout.engines.wrapper)
        if engine is None or not engine.hot:
            return None
        st = cfg.storage

        def record(adapter: str, engine_name: str, reason: str) -> None:
            from turnout.ledger.adapters import RegistryError, open_adapters

            registry = open_adapters(db=st.sqlite_path, dsn=st.postgres_dsn, schema=st.postgres_schema)
            try:
                registry.transition(adapter, "rolled_back", by="gateway",
                                    reason=f"engine {engine_name} refused to load it: {reason}")
            except RegistryError as exc:  # another replica, or the operator, was first
                log.info("adapter %s: not rolled back by this gateway (%s)", adapter, exc)
            finally:
                registry.close()

        return cls(query, {name: engine}, cfg.tune.canary.reload_s, record)

    def serving(self, engine: str) -> str | None:
        """The id of the adapter ``engine`` answers with now (None: its base weights)."""
        loaded = self.hot[engine].adapter
        return loaded.key if loaded is not None else None

    def _rows(self) -> list[tuple[str, str, str]] | None:
        assert self.query is not None
        try:
            return [(str(a), str(p), str(e)) for a, p, e in self.query(_SQL, [])]
        except Exception as exc:  # noqa: BLE001 - no registry table yet: nothing is live
            if "adapters" in str(exc):
                return []
            self._warn("read", f"the adapter registry could not be read ({exc}); the canary engine keeps its adapter")
            return None

    async def sync(self) -> None:
        """One look at the registry; each hot engine made to answer as it says."""
        rows = await asyncio.to_thread(self._rows)
        if rows is None:
            return
        for name, engine in self.hot.items():
            want = next(((a, p) for a, p, e in rows if e == name), None)
            key = want[0] if want else None
            if key == self.serving(name) or (key is not None and key in self._refused):
                continue
            try:
                self._swap = asyncio.ensure_future(engine.use_adapter(key, Path(want[1]) if want else None))
                loaded = await asyncio.shield(self._swap)  # never cut off halfway: the engine's lock is held
            except AdapterRefused as exc:
                assert key is not None
                self._refused.add(key)
                log.warning("engine %s refused adapter %s: %s; it goes on with %s", name, key, exc,
                            f"adapter {self.serving(name)}" if self.serving(name) else "its base weights")
                if self.record is not None:
                    await asyncio.to_thread(self.record, key, name, str(exc))
                continue
            except EngineError as exc:  # the engine is down: nothing to swap
                self._warn(f"down:{name}", f"engine {name} cannot take adapter {key}: {exc}")
                continue
            self.generation += 1
            if loaded is None:
                log.info("engine %s: adapter taken off; it answers with its base weights", name)
            else:
                log.info("engine %s answers with adapter %s (%s, loaded in %.3f s)", name, key, loaded.folder,
                         loaded.load_s)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.sync()
            except Exception:  # a bug must not stop the loop; the next look tries again
                log.exception("the adapter sync failed")

    async def start(self) -> None:
        """One look before the gateway serves (a promoted adapter answers from the first request after a
        restart), then one every ``period_s``."""
        try:
            await self.sync()
        except Exception:  # noqa: BLE001 - the loop tries again
            log.exception("the adapter sync failed")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="turnout-hot-adapters")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._swap is not None and not self._swap.done():  # before the engines close under it
            with contextlib.suppress(Exception):
                await self._swap

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)
