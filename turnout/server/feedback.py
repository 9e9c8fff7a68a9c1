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

A guard verdict label (docs/guards.md, "Shadow mode and learning from traffic")::

    {"request_id": "...", "kind": "guard", "value": "false_positive" | "false_negative"}

labels the injection guard's kept window of that request (``turnout.ledger.guard_examples``) for
``turnout guards fit --from-traffic``. Sent by the key that made the request, or by an admin of the
request's tenant (any of its keys' requests; never another tenant's: 404, as for an unknown id).
409 ``no_guard_example`` when the guard kept nothing for the request (it neither flagged nor
sampled it). The label stores no text: the window's embedding was kept when the guard flagged it.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.errors import InvalidRequest, NotFound
from turnout.ledger.feedback import MAX_COMMENT_CHARS, make
from turnout.ledger.guard_examples import GuardLabel
from turnout.server.authz import principal
from turnout.server.body import read_json, validate

MAX_BODY_BYTES = 16 * 1024
# A stream's ledger row is committed when the stream ends on the server, which can be a
# moment after the client has read [DONE]; feedback sent at once waits this long for it.
ROW_WAIT_SECONDS = 1.0


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    score: Literal["up", "down"] | StrictInt | None = None
    kind: Literal["guard"] | None = None
    value: Literal["false_positive", "false_negative"] | None = None
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)

    @model_validator(mode="after")
    def _one_kind(self) -> FeedbackBody:
        if self.kind == "guard":
            if self.value is None or self.score is not None:
                raise ValueError("a guard label has a value (false_positive or false_negative) and no score")
        elif self.score is None or self.value is not None:
            raise ValueError("send a score ('up', 'down' or 1..5), or kind 'guard' with a value")
        return self


async def post_feedback(request: Request) -> Response:
    body = validate(FeedbackBody, await read_json(request, MAX_BODY_BYTES))
    request_id = body.request_id.removeprefix("chatcmpl-")
    if body.kind == "guard":
        assert body.value is not None
        return await guard_label(request, request_id, body.value)
    assert body.score is not None
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


async def guard_label(request: Request, request_id: str, value: GuardLabel) -> Response:
    """A guard verdict label on the kept window of one of the caller's requests (see the module)."""
    store = request.app.state.stores.guard_examples
    if store is None:
        raise InvalidRequest("guard labels are kept in the SQLite ledger only; this gateway writes to PostgreSQL",
                             param="kind", code="guard_labels_unavailable")
    who = principal(request)
    admin = who.key is not None and who.has_role("admin")
    key_id = None if admin or who.key is None else who.key.key_id  # an admin: any key of its own tenant
    by = who.key.key_id if who.key is not None else "open"
    waited = 0.0
    while (done := await store.label(request_id, who.tenant, key_id, value, by)) == "not_found":
        if waited >= ROW_WAIT_SECONDS:
            raise NotFound(f"no request with id {request_id!r} in the ledger", param="request_id",
                           code="request_not_found")
        await asyncio.sleep(0.1)
        waited += 0.1
    if done == "no_example":
        raise InvalidRequest(f"the injection guard kept nothing of request {request_id!r}: it neither flagged nor "
                           "sampled it (guards.learning.benign_sample), so it cannot become a label",
                           status=409, param="request_id", code="no_guard_example")
    return JSONResponse({"object": "feedback", "request_id": request_id, "kind": "guard", "value": value})
