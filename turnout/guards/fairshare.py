"""The guard workers, shared fairly between tenants.

Guard work arrives as small units (one detector on one window of one message, see
``turnout.guards.scanner``). Each tenant has its own queue; a free worker takes the next unit
of the next tenant in turn (round robin), and no tenant holds more than ``share`` workers at
once (default: all but one, so with two or more workers a tenant that floods never takes the
last one). A tenant's flood therefore waits behind its own share, and another tenant's unit
waits at most for one unit in progress, whose work is bounded by the window size.

    pool = FairPool(workers=2)
    fut = pool.submit("tenant-a", detector.inspect, window)   # a concurrent.futures.Future
    fut.result(timeout=...)                                   # or await asyncio.wrap_future(fut)

A unit whose future was cancelled before it started is skipped; one that started runs to its
end (threads cannot be stopped), which the window size bounds.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

_Unit = tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...]]
# CPU-bound detector threads hold the GIL up to the switch interval (5 ms by default) at a time,
# and the event loop that answers every tenant waits that long at each hand-off. 1 ms, measured
# with bench/guard_fairness.py --rounds 2 --seconds 8 on this loaded 2-core machine, runs
# alternating: tenant B's p99 29.5/26.4 ms unloaded and 68.2/50.3 ms while A floods, against
# 43.6/39.9 and 84.4/61.6 ms at 5 ms (the ratios, 1.5-2.3x, are within the runs' noise).
SWITCH_INTERVAL_S = 0.001


class FairPool:
    def __init__(self, workers: int = 2, share: int | None = None, *, name: str = "turnout-guard") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.share = max(1, min(workers, share if share is not None else workers - 1))
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Unit]] = {}
        self._turn: deque[str] = deque()  # tenants with queued units, in the order they are served
        self._running: dict[str, int] = {}
        self._closed = False
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, tenant: str, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the guard pool is closed")
            q = self._queues.get(tenant)
            if q is None:
                q = self._queues[tenant] = deque()
                self._turn.append(tenant)
            q.append((fut, fn, args))
            self._cond.notify()
        return fut

    def busy(self, tenant: str) -> int:
        """Units of ``tenant`` queued or running."""
        with self._cond:
            return len(self._queues.get(tenant, ())) + self._running.get(tenant, 0)

    def _next(self) -> tuple[str, _Unit] | None:
        """The first tenant in turn that is under its share: its oldest unit (it goes to the back)."""
        for _ in range(len(self._turn)):
            tenant = self._turn[0]
            self._turn.rotate(-1)
            if self._running.get(tenant, 0) >= self.share:
                continue
            q = self._queues[tenant]
            unit = q.popleft()
            if not q:
                del self._queues[tenant]
                self._turn.remove(tenant)
            return tenant, unit
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                picked = self._next()
                while picked is None:
                    if self._closed:
                        return
                    self._cond.wait()
                    picked = self._next()
                tenant, (fut, fn, args) = picked
                self._running[tenant] = self._running.get(tenant, 0) + 1
            try:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(*args))
                    except BaseException as exc:  # noqa: BLE001  handed to the waiter, as an executor does
                        fut.set_exception(exc)
            finally:
                with self._cond:
                    left = self._running[tenant] - 1
                    if left:
                        self._running[tenant] = left
                    else:
                        del self._running[tenant]
                    self._cond.notify_all()

    def close(self) -> None:
        """Stop taking units; queued ones are cancelled, running ones finish."""
        with self._cond:
            self._closed = True
            for q in self._queues.values():
                for fut, _, _ in q:
                    fut.cancel()
            self._queues.clear()
            self._turn.clear()
            self._cond.notify_all()
