"""POST /v1/chat/completions: HTTP only; the logic is ``turnout.pipeline``, the wire format
``turnout.server.wire``."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from turnout.call import Call
from turnout.errors import TurnoutError
from turnout.pipeline import Gateway
from turnout.protocol import ChatRequest
from turnout.server.body import read_json, validate
from turnout.server.exchange import read_headers, refused, sse
from turnout.server.wire import completion_body, headers


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
