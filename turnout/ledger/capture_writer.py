"""The capture writer: captured requests (and answers that arrive later) written off the request
path, in batches, by one thread per ledger.

Why not in the ledger row's own transaction: a request awaits its ledger commit, and what capture
stores first needs text work (placeholders put back, the scrub: 0.2 ms for 200 characters, 5 ms
for 2,000 on this loaded 2-core machine, ``bench/capture_cost.py``) that would then delay every
captured request's answer. Here the request only puts references on a queue, after its ledger row
committed (a capture never exists without its ledger row); the thread makes the rows and commits
whatever is queued in one transaction. Later answers (a shadow call's) go through the same queue,
so they always find their request's row. What is queued when the process is killed is lost:
capture is best effort, the ledger is the record. The thread starts with the first capture, so a
gateway that captures nothing runs none.
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout import pgdb, sqlitedb
from turnout.ledger.capture import (
    CapturedAnswer,
    CaptureRow,
    PendingCapture,
    Purge,
    add_answer,
    finish,
    insert_postgres,
    insert_sqlite,
)
from turnout.ledger.writer import next_batch

log = logging.getLogger("turnout.capture")
_STOP = object()


@dataclass(frozen=True, slots=True)
class LaterAnswer:
    """An answer to a request captured earlier (a shadow call's), with the judge's scores."""

    request_id: str
    answer: CapturedAnswer
    answered_score: float | None = None  # the judge's score of the answer the client got


class CaptureWriter(ABC):
    max_batch = 256

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self.purge = Purge()

    def put(self, item: PendingCapture | LaterAnswer) -> None:
        """Queue a capture or a later answer; never blocks, never raises."""
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="turnout-capture", daemon=True)
                    self._thread.start()
        self._q.put(item)

    @abstractmethod
    def _write(self, conn: Any, rows: list[CaptureRow], later: list[LaterAnswer]) -> Any:
        """Commit ``rows`` and ``later`` in one transaction (opening ``conn`` if None); return the
        connection to reuse."""

    def _run(self) -> None:
        conn: Any = None
        try:
            while (batch := next_batch(self._q, self.max_batch, _STOP)) is not None:
                later = [i for i in batch if isinstance(i, LaterAnswer)]
                rows = finish(i for i in batch if not isinstance(i, LaterAnswer))
                try:
                    conn = self._write(conn, rows, later)
                except Exception:  # noqa: BLE001 - a capture never fails a request; the ledger is the record
                    log.exception("%d captured request(s) and %d later answer(s) were not written", len(rows),
                                  len(later))
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join(timeout)


class SQLiteCaptureWriter(CaptureWriter):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._turn = sqlitedb.WriteLock(self.path)  # in turn with the ledger's writer, in every worker process

    def _write(self, conn: Any, rows: list[CaptureRow], later: list[LaterAnswer]) -> Any:
        conn = conn or sqlitedb.connect(self.path)
        with self._turn.held(), sqlitedb.immediate(conn) as c:
            insert_sqlite(c, rows, self.purge)
            for a in later:
                add_answer(sqlitedb.Numbered(c), "", a.request_id, a.answer, a.answered_score)
        return conn

    def close(self, timeout: float = 10.0) -> None:
        super().close(timeout)
        self._turn.close()


class PostgresCaptureWriter(CaptureWriter):
    def __init__(self, dsn: str, schema: str) -> None:
        super().__init__()
        self.dsn, self.schema = dsn, schema

    def _write(self, conn: Any, rows: list[CaptureRow], later: list[LaterAnswer]) -> Any:
        conn = conn or pgdb.Connection(self.dsn)
        with conn.transaction() as cur:
            insert_postgres(cur, self.schema, rows, self.purge)
            for a in later:
                add_answer(cur, f"{self.schema}.", a.request_id, a.answer, a.answered_score)
        return conn
