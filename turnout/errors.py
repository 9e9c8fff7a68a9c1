"""One exception tree; every error that reaches a client is OpenAI-shaped.

    TurnoutError                         500 api_error
    ├── InvalidRequest                   400 invalid_request_error
    │   ├── PayloadTooLarge              413
    │   └── UnsupportedMediaType         415 (a body that is not declared application/json)
    ├── AuthenticationFailed             401 authentication_error
    ├── PermissionDenied                 403 permission_error
    │   └── PolicyBlocked                403 (a guard or policy refused the request)
    ├── NotFound                         404 not_found_error
    ├── RateLimited                      429 rate_limit_error (Retry-After)
    ├── Overloaded                       503 (backpressure; Retry-After)
    ├── NoEngineAvailable                503 (e.g. a sensitive request and no local engine up)
    ├── AllEnginesFailed                 502 / 503 (every hop of the chain failed; lists each)
    └── EngineError                      502 upstream failure, one engine, one attempt
        ├── EngineUnavailable            connection refused / reset, queue full
        │   └── CircuitOpen              the engine's circuit is open (the attempts this request made first)
        ├── PoolSaturated                every endpoint of a pool past its queue threshold: spill over
        ├── EngineTimeout                connect, first-token or total timeout
        ├── EngineRateLimited            upstream 429 (retry_after)
        ├── EngineStatusError            upstream non-2xx (status kept; 503 keeps retry_after)
        │   ├── EngineContextTooLong     400 context_length_exceeded: another engine with a larger window
        │   └── EngineContentRefused     400 content_policy_violation: passed on, never routed around
        └── EngineProtocolError          malformed body, bad SSE, wrong content type, oversize

What a caller reads of an engine failure is its kind (``EngineError.public()``: the engine's
name, the error code, the upstream status), never the message, which may hold an address, an
environment variable's name or the upstream's own words; the message goes to the ledger's
``hops`` and the log. A 4xx the client must fix (``upstream_rejected_request``, context too
long, content refused) keeps the upstream's words: they are about the client's request.

``EngineError.retryable`` says whether the same engine may be tried again;
``EngineError.fallback`` says whether the next engine in the chain may be tried;
``EngineError.unreachable`` whether the engine could not take the request at all (503) rather
than answering it wrongly (502); ``EngineError.retry_after`` how long it asked us to wait.
"""

from __future__ import annotations

from typing import Any


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, int(seconds + 0.999)))


class TurnoutError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(TurnoutError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class AuthenticationFailed(TurnoutError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(TurnoutError):
    status = 403
    type = "permission_error"


class PolicyBlocked(PermissionDenied):
    code = "policy_blocked"


class NotFound(TurnoutError):
    status = 404
    type = "not_found_error"


class RateLimited(TurnoutError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.headers.setdefault("Retry-After", retry_after_header(retry_after))


class Overloaded(TurnoutError):
    status = 503
    type = "overloaded_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("Retry-After", retry_after_header(retry_after))


class NoEngineAvailable(TurnoutError):
    status = 503
    type = "service_unavailable_error"
    code = "no_engine_available"


class EngineError(TurnoutError):
    """One engine failed once. Carries the engine name for the hop report."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retryable = True
    fallback = True

    def __init__(self, message: str, *, engine: str = "?", retry_after: float | None = None,
                 reason: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.engine = engine
        self.retry_after = retry_after  # seconds the engine asked us (or we ask clients) to wait
        self.reason = reason  # turnout's own words for the failure, safe for callers (None: the code says it)

    #: The engine could not take the request (down, slow, rate-limited, overloaded), as
    #: opposed to answering it wrongly: a chain of such failures is a 503, not a 502.
    unreachable = False

    def public(self) -> str:
        """The failure as a caller may read it: engine and kind, no address or variable name."""
        return f"{self.engine}: {self.code}" + (f" ({self.reason})" if self.reason else "")

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["message"] = self.public()
        return body


class EngineUnavailable(EngineError):
    status = 503
    code = "engine_unavailable"
    unreachable = True


class CircuitOpen(EngineUnavailable):
    """The engine's circuit breaker refused the request. ``attempts`` are the failures this
    request met on the engine before (a probe that failed reopens the circuit, and its retry is
    refused): the ledger's hop lists them, so a refused request's row says what happened."""

    code = "circuit_open"
    retryable = False

    def __init__(self, message: str, *, attempts: list[EngineError] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.attempts = list(attempts or ())


class PoolSaturated(EngineError):
    """Every endpoint of a pool (``turnout.engines.pool``) is past its queue threshold and the
    request may move on to the next engine of its chain instead of queueing (spill-over). Not a
    failure of the engine: never retried on it, never counted against its circuit breaker."""

    status = 503
    code = "spill"
    unreachable = True
    retryable = False


class EngineTimeout(EngineError):
    """A silent engine: no answer (or no first token) within the timeout. Not retried: waiting
    that long again on the same engine is worse than moving to the next one at once."""

    status = 504
    code = "engine_timeout"
    unreachable = True
    retryable = False


class EngineRateLimited(EngineError):
    status = 429
    code = "upstream_rate_limited"
    unreachable = True


class EngineStatusError(EngineError):
    """Upstream answered non-2xx. 5xx retries and falls back; 4xx other than 401/403/404/408
    means the request itself is bad and is passed to the client as-is (no retry, no fallback);
    401/403 (bad credentials at one provider) falls back but does not retry."""

    def __init__(self, message: str, *, upstream_status: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.upstream_status = upstream_status
        self.unreachable = upstream_status == 503  # overloaded: "try later", like a timeout
        if upstream_status >= 500 or upstream_status == 408:
            self.retryable, self.fallback = True, True
        elif upstream_status in (401, 403, 404):
            self.retryable, self.fallback = False, True
        else:
            self.retryable, self.fallback = False, False
            self.status = upstream_status
            self.type = "invalid_request_error"
            self.code = "upstream_rejected_request"

    def public(self) -> str:
        if self.type == "invalid_request_error":  # about the client's own request: the upstream's words
            return self.message
        return f"{self.engine}: {self.code} (HTTP {self.upstream_status})"


class EngineContextTooLong(EngineStatusError):
    """The prompt does not fit this engine's context window. Never resent to the same engine;
    the chain moves to an engine whose declared window is larger, and when none is left the
    client gets this 400 (it must shorten the request)."""

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, upstream_status=400, **kw)
        self.retryable, self.fallback = False, True
        self.code = "context_length_exceeded"


class EngineContentRefused(EngineStatusError):
    """The provider refused the content (OpenAI ``content_policy_violation``): passed to the
    client as it is, never routed around to a more permissive engine."""

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, upstream_status=400, **kw)
        self.retryable, self.fallback = False, False
        self.code = "content_policy_violation"


class EngineProtocolError(EngineError):
    code = "upstream_protocol_error"


class AllEnginesFailed(TurnoutError):
    """Every engine of the chain failed. 503 when none was reachable, else 502. The message
    names each hop's engine and kind of failure; what each said is in ``hops`` (the ledger's)."""

    type = "upstream_error"
    code = "all_engines_failed"

    def __init__(self, hops: list[EngineError]) -> None:
        reasons = "; ".join(h.public() for h in hops) or "no engine in chain"
        unreachable = all(h.unreachable for h in hops)
        super().__init__(f"all engines failed: {reasons}", status=503 if unreachable else 502)
        self.hops = hops
        retry = [h.retry_after for h in hops if h.retry_after]
        if retry:
            self.headers["Retry-After"] = retry_after_header(min(retry))
