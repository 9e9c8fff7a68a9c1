"""The Ledger interface: where each request's row (and its audit entry) is committed.
Embedded: ``turnout.ledger.sqlite.SQLiteLedger``; scale-out: ``turnout.ledger.postgres.PostgresLedger``."""

from __future__ import annotations

from typing import Any, Protocol

from turnout.ledger.sqlite import LedgerRow


class Ledger(Protocol):
    async def record(self, row: LedgerRow) -> None:
        """Append one row and its audit entry; return once both are committed."""

    def rows(self, since: float | None = None) -> list[dict[str, Any]]: ...

    def spend_since(self, since: float) -> dict[str, list[float]]:
        """The cost of each request per API key since a Unix time (seeds budget counters)."""

    async def close(self) -> None: ...
