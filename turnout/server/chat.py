"""POST /v1/chat/completions: HTTP only; the logic is ``turnout.pipeline``."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from turnout.errors import InvalidRequest, TurnoutError
from turnout.pipeline import Call, Gateway, new_request_id
from turnout.protocol import SENSITIVITY_LEVELS as SENSITIVITY
from turnout.protocol import ChatRequest
from turnout.server.body import read_json, validate
from turnout.server.errors import error_response


def _call_for(request: Request) -> Call:
    call = Call(request_id=new_request_id())
    if "traceparent" in request.headers:  # continue the client's trace (W3C Trace Context)
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        call.trace_parent = TraceContextTextMapPropagator().extract(dict(request.headers))
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        call.credentials = auth[7:].strip() or None
    label = request.headers.get("x-turnout-sensitivity")
    if label is not None:
        label = label.strip().lower()
        if label not in SENSITIVITY:
            raise InvalidRequest(
                f"x-turnout-sensitivity must be one of {sorted(SENSITIVITY)}, got {label!r}", param="x-turnout-sensitivity"
            )
        call.sensitivity = label
    return call


async def chat_completions(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    call = _call_for(request)
    try:
        req = validate(ChatRequest, await read_json(request, gw.cfg.server.max_body_bytes))
        if req.stream:
            body = await gw.stream(req, call)
            return StreamingResponse(body, media_type="text/event-stream", headers={**call.headers(), "Cache-Control": "no-cache"})
        result = await _until_disconnect(request, gw.chat(req, call))
    except TurnoutError as exc:
        if call.decision is None and call.status == "ok":  # rejected before the pipeline: still recorded
            call.fail(exc)
            await gw.record(call)
        return error_response(exc, call.headers())
    return Response(orjson.dumps(result), media_type="application/json", headers=call.headers())


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
