"""POST /v1/feedback: a thumbs or a 1-5 rating on one answer (see turnout.ledger.feedback).

    {"request_id": "<x-request-id or the completion's chatcmpl-... id>",
     "score": "up" | "down" | 1..5,
     "comment": "optional, at most 2000 characters"}

200 with the stored, normalised feedback; 404 for an unknown request id, or one another key
made (of this tenant or another: the three are indistinguishable, so one user cannot overwrite
another's feedback nor probe their request ids); 400 for a bad body. Needs a ``user`` key. Unknown
fields are refused (this is our own endpoint, so a typo should not pass).

Feedback on an answer of a ``learned`` or ``cascade`` route's weak engine also becomes a routing
label (source ``feedback``, the satisfaction as the weak answer's score, the pseudonymized prompt;
never for a request kept local): ``turnout.learning.LearningLoop.feedback``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.errors import InvalidRequest, NotFound
from turnout.ledger.feedback import MAX_COMMENT_CHARS, make
from turnout.server.authz import principal
from turnout.server.body import read_json, validate

MAX_BODY_BYTES = 16 * 1024
# A stream's ledger row is committed when the stream ends on the server, which can be a
# moment after the client has read [DONE]; feedback sent at once waits this long for it.
ROW_WAIT_SECONDS = 1.0


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    score: Literal["up", "down"] | StrictInt
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)


async def post_feedback(request: Request) -> Response:
    body = validate(FeedbackBody, await read_json(request, MAX_BODY_BYTES))
    request_id = body.request_id.removeprefix("chatcmpl-")
    try:
        fb = make(request_id, body.score, body.comment)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="score", code="invalid_value") from None
    store = request.app.state.stores.feedback
    waited = 0.0
    who = principal(request)
    tenant = who.tenant
    key_id = who.key.key_id if who.key is not None else None  # open mode: no keys, any request
    while not await store.add(fb, tenant, key_id):
        if waited >= ROW_WAIT_SECONDS:
            raise NotFound(f"no request with id {request_id!r} in the ledger", param="request_id",
                           code="request_not_found")
        await asyncio.sleep(0.1)
        waited += 0.1
    learning = request.app.state.gateway.learning
    if learning is not None:  # on a weak engine's answer of a learned/cascade route: a routing label
        learning.feedback(request_id, tenant, fb.satisfaction)
    return JSONResponse({"object": "feedback", "request_id": fb.request_id, "kind": fb.kind, "value": fb.value,
                         "satisfaction": fb.satisfaction, "comment": fb.comment})
