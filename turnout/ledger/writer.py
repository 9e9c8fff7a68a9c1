"""Group commit: one thread writes ledger rows in batches; each ``record`` returns once the
transaction holding its row has committed, so many concurrent requests share one commit and
a request reported complete is durable. Backends implement one transaction (``_write``)."""

from __future__ import annotations

import asyncio
import queue
import threading
from abc import ABC, abstractmethod
from typing import Any

from turnout.ledger.base import LedgerRow

_STOP = object()


def next_batch(q: queue.SimpleQueue[Any], max_batch: int, stop: object) -> list[Any] | None:
    """What a writer thread commits next: the first item (waited for) and whatever else is queued,
    up to ``max_batch``; None once ``stop`` is first in line (a ``stop`` after queued items ends the
    batch and is put back, so what was queued before it is written)."""
    item = q.get()
    if item is stop:
        return None
    batch = [item]
    while len(batch) < max_batch:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            break
        if nxt is stop:
            q.put(stop)  # finish this batch, then stop
            break
        batch.append(nxt)
    return batch


class GroupCommitWriter(ABC):
    max_batch = 512

    def _start(self, name: str) -> None:
        """Start the writer thread; call at the end of the subclass's ``__init__``."""
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @abstractmethod
    def _write(self, conn: Any, rows: list[LedgerRow]) -> Any:
        """Commit ``rows`` (and their audit entries) in one transaction, opening ``conn`` if it
        is None; return the connection to reuse. Raise if the transaction did not commit."""

    def _recover(self, conn: Any) -> Any:
        """After a failed batch: the connection to use next (None to reconnect)."""
        return conn

    def _close_conn(self, conn: Any) -> None:
        conn.close()

    async def record(self, row: LedgerRow) -> None:
        """Append one row; returns once it is committed (raises if its batch failed)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((row, loop, fut))
        await fut

    def _next_batch(self) -> list[Any] | None:
        return next_batch(self._q, self.max_batch, _STOP)

    def _run(self) -> None:
        conn: Any = None
        try:
            while (batch := self._next_batch()) is not None:
                error: BaseException | None = None
                try:
                    conn = self._write(conn, [row for row, _, _ in batch])
                except BaseException as exc:  # noqa: BLE001 - a failed batch fails each of its requests' awaits
                    error = exc
                    conn = self._recover(conn)
                waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
                for _, loop, fut in batch:  # one wake-up of each event loop per batch, not one per row
                    waiting.setdefault(loop, []).append(fut)
                for loop, futs in waiting.items():
                    loop.call_soon_threadsafe(_settle, futs, error)
        finally:
            if conn is not None:
                self._close_conn(conn)

    async def close(self) -> None:
        self._q.put(_STOP)
        await asyncio.to_thread(self._thread.join, 10)


def _settle(futs: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futs:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
