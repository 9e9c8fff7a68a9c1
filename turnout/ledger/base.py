"""The Ledger interface and its row: where each request's row (and its audit entry) is committed.
Embedded: ``turnout.ledger.sqlite.SQLiteLedger``; scale-out: ``turnout.ledger.postgres.PostgresLedger``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from turnout.ledger.audit import ROW_HASH, row_sha256

if TYPE_CHECKING:
    from turnout.ledger.capture import CapturedAnswer, PendingCapture

# the columns of the ``requests`` table that a LedgerRow fills, in insert order
COLUMNS = ["ts", "request_id", "tenant", "alias", "rule", "reason", "strategy", "score", "threshold", "engine",
           "locality", "hops", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "cost_usd",
           "baseline_cost_usd", "status", "http_status", "stream", "error", "labels", "trace_id", "key_id",
           "function", "variant", "template_hash", "episode", "function_attempt", "function_outcome", "signals",
           "endpoint"]


@dataclass(slots=True)
class LedgerRow:
    ts: float
    request_id: str
    tenant: str
    alias: str
    status: str                    # ok | error | error_midstream | client_closed (499)
    http_status: int
    rule: str | None = None
    reason: str | None = None
    strategy: str | None = None
    score: float | None = None
    threshold: float | None = None
    engine: str | None = None
    locality: str | None = None
    hops: str = "[]"               # JSON list of {"engine", "error"} for each failed hop
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    stream: int = 0
    error: str | None = None
    labels: str = ""
    trace_id: str | None = None
    key_id: str | None = None
    function: str | None = None          # turnout.functions: "fn:NAME" calls only
    variant: str | None = None
    template_hash: str | None = None     # the variant's template version
    episode: str | None = None           # the caller's episode id (sticky variant assignment)
    function_attempt: str | None = None  # first | retry | escalated
    function_outcome: str | None = None  # valid | unchecked | invalid: <why>
    signals: str | None = None           # cascade: the weak draft's confidence signals, JSON
    endpoint: str | None = None          # a pool engine's endpoint that answered (turnout.engines.pool)

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in COLUMNS)

    def audit_payload(self) -> dict[str, Any]:
        """What the audit log keeps: the decision, never the content (labels are finding types),
        and the hash of the whole row, so an edit to any stored field is found by verify."""
        return {
            "request_id": self.request_id, "tenant": self.tenant, "route": self.alias, "rule": self.rule,
            "reason": self.reason, "engine": self.engine, "cost_usd": self.cost_usd, "status": self.http_status,
            "findings": sorted(filter(None, self.labels.split(","))),
            ROW_HASH: row_sha256(dict(zip(COLUMNS, self.values(), strict=True))),
        }


class Ledger(Protocol):
    async def record(self, row: LedgerRow) -> None:
        """Append one row and its audit entry; return once both are committed."""

    def rows(self, since: float | None = None) -> list[dict[str, Any]]: ...

    def spend_since(self, since: float) -> dict[str, list[float]]:
        """The cost of each request per API key since a Unix time (seeds budget counters)."""

    def keep(self, capture: PendingCapture) -> None:
        """Queue a request's capture (``turnout.capture``), once its row is committed; written off
        the request path (``turnout.ledger.capture_writer``). Never blocks."""

    def keep_answer(self, request_id: str, answer: CapturedAnswer, answered_score: float | None = None) -> None:
        """Queue a later answer (a shadow call's) of a captured request, after its capture."""

    async def close(self) -> None: ...
