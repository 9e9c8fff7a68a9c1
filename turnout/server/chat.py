"""POST /v1/chat/completions: HTTP only; the logic is ``turnout.pipeline``, the wire format
``turnout.server.wire``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from turnout.call import Call
from turnout.engines.base import Delta
from turnout.errors import EngineError, InvalidRequest, TurnoutError
from turnout.governance.access import token_from
from turnout.pipeline import Gateway
from turnout.protocol import ChatRequest
from turnout.server.authz import challenge
from turnout.server.body import read_json, validate
from turnout.server.errors import error_response
from turnout.server.wire import ChunkWriter, completion_body, headers

SENSITIVITY = {"public", "internal", "sensitive", "restricted"}


def read_headers(call: Call, request: Request) -> None:
    """The request's credentials, sensitivity label and trace context; 400 for a bad label."""
    if "traceparent" in request.headers:  # continue the client's trace (W3C Trace Context)
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        call.trace_parent = TraceContextTextMapPropagator().extract(dict(request.headers))
    call.credentials = token_from(request.headers.get("authorization"))
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
        await gw.record(call)
    return error_response(exc, {**headers(call), **challenge(exc)})


async def chat_completions(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    call = Call()
    try:
        read_headers(call, request)
        req = validate(ChatRequest, await read_json(request, gw.cfg.server.max_body_bytes))
        if req.model.startswith("fn:"):  # a function (turnout.functions): a client of the same pipeline
            from turnout.server.functions import function_completions

            return await function_completions(request, req, call, _until_disconnect)
        if req.stream:
            deltas = await gw.stream(req, call)
            return StreamingResponse(sse(call, req, deltas), media_type="text/event-stream",
                                     headers={**headers(call), "Cache-Control": "no-cache"})
        result = await _until_disconnect(request, gw.chat(req, call))
    except TurnoutError as exc:
        return await refused(gw, call, exc)
    return Response(orjson.dumps(completion_body(call, result)), media_type="application/json", headers=headers(call))


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


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Run the pipeline, cancelling it if the client disconnects first (so a local model
    stops generating for nobody)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    return await task
