"""One request's state on its way through the pipeline.

Each step owns what it writes: authenticate the key and tenant, reserve the reservation,
inspect and ground the labels, decide the decision, protect the guard state, the cache step
its ``CacheLookup``, the engine stack its ``Trail`` (attempts and failed hops), tracing the
request's span, and whatever ends the request its outcome. The recorder turns it into a
ledger row; the server turns it into response headers (``turnout.server.wire``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from turnout.cache import CacheLookup
from turnout.engines.trail import Trail
from turnout.errors import TurnoutError
from turnout.governance.keys import ApiKey
from turnout.governance.limits import Reservation
from turnout.guards.step import GuardState
from turnout.ledger.capture import PendingCapture
from turnout.ledger.tags import FunctionTag
from turnout.protocol import ChatMessage
from turnout.routing.decision import Decision


def new_request_id() -> str:
    """Server-made and unique: the ledger's key. (A client's own id would let two requests collide.)"""
    return secrets.token_hex(16)


@dataclass(slots=True)
class Call:
    request_id: str = field(default_factory=new_request_id)
    credentials: str | None = field(default=None, repr=False)  # dropped once authenticated
    on_behalf_of: str | None = None  # a task's call: the key id that started the task (no token at hand)
    sensitivity: str | None = None
    stream: bool = False
    ts: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    trace_parent: Any = None     # the client's W3C trace context, if it sent one
    # authenticate / reserve
    tenant: str = "anonymous"
    key: ApiKey | None = None
    reservation: Reservation | None = None
    spend_cap_usd: float | None = None  # a task's budget left: a call whose worst case exceeds it is refused
    # messages the gateway itself wrote (a task's planner template, its system prompts): the
    # injection check skips them, PII and secrets checks do not; never set from the wire
    authored: tuple[ChatMessage, ...] = ()
    # inspect, ground, cache, scan
    labels: set[str] = field(default_factory=set)
    route: str | None = None     # the route asked for, once the guards inspected it (before any decision)
    # decide / protect
    decision: Decision | None = None
    guard: GuardState | None = None
    # cache
    cache: CacheLookup | None = None
    # the engine stack
    trail: Trail = field(default_factory=Trail)
    ttft: float | None = None    # time to the first delta the client was sent (streams)
    # tracing
    span: Any = None             # the request's root span (when tracing is on)
    trace_id: str | None = None
    # outcome
    status: str = "ok"
    http_status: int = 200
    client_closed: bool = False  # set by the server when the client's connection closed (streams stop relaying)
    error: str | None = None
    # a function call (turnout.functions): judged once the answer is final, copied to the row
    function: FunctionTag | None = None
    # capture (turnout.capture): the request and its answers for datasets, written with the ledger row
    capture: PendingCapture | None = None

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, TurnoutError):
            self.status, self.http_status, self.error = "error", exc.status, exc.message
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # the server stopped the work: the client left
            # 499: nginx's "client closed request"
            self.status, self.http_status, self.error = (
                "client_closed", 499, "the client closed the connection before the answer was complete")
        else:
            self.status, self.http_status, self.error = "error", 500, f"internal error: {exc.__class__.__name__}"

    @property
    def model(self) -> str:
        """The model that made the answer: the engine's, or a cached answer's."""
        engine = self.trail.engine
        if engine is not None:
            return engine.model
        return self.cache.model if self.cache is not None else ""
