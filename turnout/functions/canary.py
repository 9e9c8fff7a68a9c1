"""An adapter on canary (or promoted) as a variant of its function's experiment (issue 26 item 5).

The adapter registry (``turnout.ledger.adapters``, written by ``turnout adapters promote|rollback|watch``)
says, per function, which adapter is live: its variant name, the variant it copies (templates,
parameters), the engine that answers with the adapter, and its share of new episodes (the canary's
share, 1 once promoted, 0 once rolled back: then it is no longer live). The runner reads it through the
ledger's read-only query, at most every ``tune.canary.reload_s`` seconds per function, and:

- makes the canary variant: the copied variant with its route set to the canary engine;
- scales the experiment's shares by ``1 - share`` and gives the canary ``share``.

A registry that names an engine the gateway does not run, or a variant the function does not have, is
ignored (logged once): the function keeps its own variants. A database without the registry table
(no adapter was ever registered) is the same as no canary.

On a canary engine whose adapter comes from the registry (``turnout.functions.hot_adapters``), the
adapter is live only once that engine answers with it: until it has checked and loaded it -- and never,
when it refused it -- the function keeps its own variants. What was read is kept ``reload_s``, or until
the engine swaps adapters.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from turnout.functions.experiment import Allocation, Query
from turnout.functions.spec import Function, Variant

if TYPE_CHECKING:
    from turnout.functions.hot_adapters import HotAdapters

log = logging.getLogger("turnout.functions")

_SQL = ("SELECT id, variant, from_variant, engine, share, status FROM adapters "
        "WHERE function = $1 AND status IN ('canary', 'promoted') ORDER BY updated_ts DESC")


@dataclass(frozen=True)
class Live:
    adapter: str
    variant: Variant      # the copied variant, answering through the canary engine
    share: float
    status: str


class Canaries:
    """What the registry says is live, per function, read at most every ``reload_s``."""

    def __init__(self, query: Query | None, engines: set[str], reload_s: float = 5.0,
                 hot: HotAdapters | None = None) -> None:
        self.query = query
        self.engines = engines
        self.reload_s = reload_s
        self.hot = hot  # the engines whose adapter comes from the registry
        self._cache: dict[str, tuple[float, int, Live | None]] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def live(self, fn: Function) -> Live | None:
        if self.query is None:
            return None
        now = time.monotonic()
        generation = self.hot.generation if self.hot is not None else 0
        with self._lock:
            hit = self._cache.get(fn.name)
        if hit is not None and now - hit[0] < self.reload_s and hit[1] == generation:
            return hit[2]
        found = self._read(fn)
        with self._lock:
            self._cache[fn.name] = (now, generation, found)
        return found

    def _read(self, fn: Function) -> Live | None:
        assert self.query is not None
        try:
            rows = self.query(_SQL, [fn.name])
        except Exception as exc:  # noqa: BLE001 - no registry table yet: no canary
            if "adapters" not in str(exc):
                self._warn(fn.name, f"the adapter registry could not be read ({exc}); no canary")
            return None
        for adapter, variant, source, engine, share, status in rows:
            base = fn.variants.get(str(source))
            if base is None or engine not in self.engines or not variant:
                self._warn(f"{fn.name}:{adapter}", f"fn:{fn.name}: adapter {adapter} is {status} through engine "
                           f"{engine!r} from variant {source!r}, which this gateway does not have; ignored")
                continue
            if self.hot is not None and engine in self.hot.engines and self.hot.serving(engine) != adapter:
                return None  # not loaded yet, or refused: the function's own variants answer
            spec = base.spec.model_copy(update={"route": engine, "weight": 0.0})
            return Live(str(adapter), dataclasses.replace(base, name=str(variant), spec=spec),
                        1.0 if status == "promoted" else float(share or 0.0), str(status))
        return None

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


def with_canary(alloc: Allocation, live: Live | None) -> Allocation:
    """The experiment's shares with the live adapter's variant given its share."""
    if live is None or live.share <= 0:
        return alloc
    if live.share >= 1:
        return dataclasses.replace(alloc, shares={live.variant.name: 1.0},
                                   note=f"adapter {live.adapter} promoted: all traffic")
    shares = {n: s * (1 - live.share) for n, s in alloc.shares.items()}
    shares[live.variant.name] = live.share
    return dataclasses.replace(alloc, shares=shares,
                               note=f"{alloc.note}; adapter {live.adapter} on canary at {live.share:.0%}")
