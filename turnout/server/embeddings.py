"""POST /v1/embeddings: HTTP only; the logic is ``Gateway.embed`` in ``turnout.pipeline``."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from turnout.call import Call
from turnout.errors import TurnoutError
from turnout.pipeline import Gateway
from turnout.protocol import EmbeddingRequest
from turnout.server.body import read_json, validate
from turnout.server.exchange import read_headers, refused
from turnout.server.wire import embedding_body, headers


async def create_embeddings(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    call = Call()
    try:
        read_headers(call, request)
        req = validate(EmbeddingRequest, await read_json(request, gw.cfg.server.max_body_bytes))
        result = await gw.embed(req, call)
    except TurnoutError as exc:
        return await refused(gw, call, exc)
    return Response(orjson.dumps(embedding_body(call, req, result)), media_type="application/json",
                    headers=headers(call))
