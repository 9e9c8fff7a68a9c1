"""POST /v1/chat/completions: HTTP only; the logic is ``turnout.pipeline``, the wire format
``turnout.server.wire``."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from turnout.call import Call
from turnout.errors import TurnoutError
from turnout.pipeline import Gateway
from turnout.protocol import ChatRequest
from turnout.server.body import read_json, validate
from turnout.server.exchange import (
    CLIENT_CLOSED,
    ClientClosed,
    EventStream,
    read_headers,
    refused,
    sse,
    until_disconnect,
)
from turnout.server.wire import completion_body, headers


async def chat_completions(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    call = Call()
    try:
        read_headers(call, request)
        req = validate(ChatRequest, await read_json(request, gw.cfg.server.max_body_bytes))
        if req.model.startswith("fn:"):  # a function (turnout.functions): a client of the same pipeline
            from turnout.server.functions import function_completions

            return await function_completions(request, req, call, until_disconnect)
        if req.stream:  # the client may leave while the first token is awaited, too
            deltas = await until_disconnect(request, gw.stream(req, call))
            return EventStream(call, sse(call, req, deltas), headers(call))
        result = await until_disconnect(request, gw.chat(req, call))
    except TurnoutError as exc:
        return await refused(gw, call, exc)
    except ClientClosed:  # recorded by the pipeline; nobody to answer
        return Response(status_code=CLIENT_CLOSED)
    return Response(orjson.dumps(completion_body(call, result)), media_type="application/json", headers=headers(call))
