"""POST /v1/embeddings: HTTP only; the logic is ``Gateway.embed`` in ``turnout.pipeline``."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from turnout.errors import TurnoutError
from turnout.pipeline import Gateway
from turnout.protocol import EmbeddingRequest
from turnout.server.authz import challenge
from turnout.server.body import read_json, validate
from turnout.server.chat import _call_for
from turnout.server.errors import error_response


async def create_embeddings(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    call = None
    try:
        call = _call_for(request)
        req = validate(EmbeddingRequest, await read_json(request, gw.cfg.server.max_body_bytes))
        result = await gw.embed(req, call)
    except TurnoutError as exc:
        if call is not None and call.decision is None and call.status == "ok":  # refused before the pipeline
            call.fail(exc)
            await gw.record(call)
        return error_response(exc, {**(call.headers() if call is not None else {}), **challenge(exc)})
    return Response(orjson.dumps(result), media_type="application/json", headers=call.headers())
