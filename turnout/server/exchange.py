"""The HTTP side that chat, embeddings and functions share: a request's headers read into its
``Call``, a refusal (recorded when the pipeline never saw the request), and a stream of deltas
written as server-sent events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from turnout.call import Call
from turnout.engines.base import Delta
from turnout.errors import EngineError, InvalidRequest, TurnoutError
from turnout.governance.access import token_from
from turnout.pipeline import Gateway
from turnout.protocol import SENSITIVITY_LEVELS as SENSITIVITY
from turnout.protocol import ChatRequest
from turnout.server.authz import authorization, challenge
from turnout.server.errors import error_response
from turnout.server.wire import ChunkWriter, headers


def read_headers(call: Call, request: Request) -> None:
    """The request's credentials, sensitivity label and trace context; 400 for a bad label."""
    if "traceparent" in request.headers:  # continue the client's trace (W3C Trace Context)
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        call.trace_parent = TraceContextTextMapPropagator().extract(dict(request.headers))
    call.credentials = token_from(authorization(request.headers))
    label = request.headers.get("x-turnout-sensitivity")
    if label is not None:
        label = label.strip().lower()
        if label not in SENSITIVITY:
            raise InvalidRequest(
                f"x-turnout-sensitivity must be one of {sorted(SENSITIVITY)}, got {label!r}", param="x-turnout-sensitivity"
            )
        call.sensitivity = label


async def refused(gw: Gateway, call: Call, exc: TurnoutError) -> Response:
    """An error response; a request refused before the pipeline took it is still recorded."""
    if call.decision is None and call.status == "ok":
        call.fail(exc)
        if call.key is None and call.credentials and gw.access is not None:  # refused before authenticate:
            with contextlib.suppress(Exception):  # a valid key's bad request is recorded under its tenant
                if (key := await gw.access.identify(call.credentials)) is not None:
                    call.key, call.tenant = key, key.tenant
        await gw.record(call)  # a caller without a valid key is counted, not recorded (turnout.recorder)
    return error_response(exc, {**headers(call), **challenge(exc)})


async def sse(call: Call, req: ChatRequest, deltas: AsyncIterator[Delta]) -> AsyncIterator[bytes]:
    """The stream as ``chat.completion.chunk`` events; a failure after the first chunk ends it
    with an error event (never a truncation that reads as success)."""
    chunks = ChunkWriter(call, req)
    try:
        async for d in deltas:
            yield chunks.delta(d)
    except EngineError as exc:
        yield chunks.error(exc)
        return
    if req.include_usage:
        yield chunks.usage()
    yield ChunkWriter.DONE
