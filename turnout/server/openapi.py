"""GET /openapi.json: an OpenAPI 3.1 document of every endpoint the app serves (a test compares
it with the app's routes): inference, embeddings, collections, tasks and approvals, the browser
login, health, and (``turnout.server.openapi_ops``) feedback, usage, reports, the configuration,
keys, metrics and the pages.

Request schemas are the handlers' pydantic models (``turnout.protocol.ChatRequest`` and the
bodies of ``turnout.server``), so the document cannot disagree with the validation the server
runs. Responses are plain dicts (OpenAI's shape for inference); their schemas are written here,
with the error body every failure shares: ``{"error": {"message", "type", "param", "code"}}``.
Each operation's security and its 401/403 come from the role table, ``turnout.server.authz``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout import __version__
from turnout.protocol import ChatRequest, EmbeddingRequest
from turnout.server import openapi_ops

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING = {"type": "string"}
_INT = {"type": "integer"}
_OBJ = {"type": "object"}

USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT},
}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {"message": _STRING, "type": _STRING, "param": _nullable(_STRING),
                           "code": _nullable(_STRING)},
        }
    },
}

CHAT_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": _STRING,
        "object": {"const": "chat.completion"},
        "created": _INT,
        "model": _STRING,
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": _INT,
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": _nullable(_STRING),
                            "tool_calls": {"type": "array", "items": _OBJ},
                        },
                    },
                    "logprobs": _nullable(_OBJ),
                    "finish_reason": {"type": "string"},
                },
            },
        },
        "usage": {**_ref("Usage"), "description": "every token the request was billed for, by every engine "
                  "(docs/reliability.md, Usage)"},
        "turnout": {**_OBJ, "description": "when more than one engine was billed (a cascade's weak draft and "
                    "strong answer): usage.billed per engine and usage.discarded"},
    },
}

CHAT_CHUNK = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": _STRING,
        "object": {"const": "chat.completion.chunk"},
        "created": _INT,
        "model": _STRING,
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "delta", "finish_reason"],
                "properties": {"index": _INT, "delta": _OBJ, "logprobs": _nullable(_OBJ),
                               "finish_reason": _nullable(_STRING)},
            },
        },
        "usage": _nullable(_ref("Usage")),
        "turnout": {**_OBJ, "description": "on the finish chunk of an answer more than one engine worked on: "
                    "rescues (engines, model, each splice) and usage (billed per engine, discarded)"},
    },
}

# One server-sent event (OpenAPI 3.1: the stream's ``schema`` describes each event): a chunk,
# an error event when the engine fails mid-stream, or the final ``[DONE]``.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"anyOf": [
            {"const": "[DONE]"},
            {"type": "string", "contentMediaType": "application/json",
             "contentSchema": {"anyOf": [_ref("ChatCompletionChunk"), _ref("Error")]}},
        ]},
    },
}

MODEL_LIST = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "object", "created", "owned_by"],
                "properties": {"id": _STRING, "object": {"const": "model"}, "created": _INT, "owned_by": _STRING,
                               "turnout": _OBJ},
            },
        },
    },
}

HEALTH = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
READY = {
    "type": "object",
    "required": ["status", "engines"],
    "properties": {
        "status": {"enum": ["ready", "degraded"]},
        "engines": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["ready", "locality"],
                "properties": {"ready": {"type": "boolean"},
                               "detail": {**_STRING, "description": "why it is (not) ready: for a viewer or admin "
                                          "key only (anyone in auth: open)"},
                               "locality": {"enum": ["local", "remote"]}},
            },
        },
        "routers": {
            "description": "learned routes only: the router artifact serving (null: routed by the chain's "
                           "rules), whether a newer one failed to load, the last scheduled retrain that "
                           "decided (a skipped round shows only until one promotes, refuses or fails)",
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["artifact", "ok", "detail"],
                "properties": {
                    "artifact": _nullable(_STRING), "ok": {"type": "boolean"}, "detail": _nullable(_STRING),
                    "retrain": _nullable({"type": "object", "properties": {
                        "result": {"enum": ["promoted", "refused", "skipped", "failed"]},
                        "at": _STRING, "artifact": _nullable(_STRING)}}),
                },
            },
        },
    },
}

# Checks that ChatRequest runs in code (validators), stated in the schema too.
_REQUEST_OVERRIDES: dict[str, dict[str, Any]] = {
    "n": {"type": "integer", "minimum": 1, "maximum": 1, "default": 1, "description": "only 1 is supported"},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                       {"type": "null"}], "default": None},
}

EMBEDDING_LIST = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {
            "type": "object", "required": ["object", "index", "embedding"],
            "properties": {"object": {"const": "embedding"}, "index": _INT,
                           "embedding": {"anyOf": [
                               {"type": "array", "items": {"type": "number"}},
                               {"type": "string", "description": "base64 of little-endian float32"}]}},
        }},
        "model": _STRING,
        "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
                  "properties": {"prompt_tokens": _INT, "total_tokens": _INT}},
    },
}

COLLECTION = {
    "type": "object", "required": ["object", "collection", "documents", "chunks"],
    "properties": {"object": {"const": "collection"}, "collection": _STRING, "documents": _INT, "chunks": _INT},
}
COLLECTION_DOCUMENTS = {
    "type": "object", "required": ["object", "collection", "chunks", "documents"],
    "properties": {"object": {"const": "collection.documents"}, "collection": _STRING,
                   "chunks": {"anyOf": [_INT, {"type": "object", "additionalProperties": _INT}]},
                   "documents": _INT},
}
COLLECTION_DELETED = {
    "type": "object", "required": ["object", "collection", "chunks"],
    "properties": {"object": {"const": "collection.deleted"}, "collection": _STRING,
                   "document": _nullable(_STRING), "chunks": _INT},
}
PASSAGES = {
    "type": "object", "required": ["object", "collection", "data"],
    "properties": {"object": {"const": "list"}, "collection": _STRING, "data": {"type": "array", "items": {
        "type": "object", "required": ["document", "chunk", "score", "text"],
        "properties": {"document": _STRING, "chunk": _INT, "score": {"type": "number"}, "text": _STRING,
                       "metadata": _OBJ}}}},
}

ERRORS = {
    "400": "invalid JSON or a schema violation",
    "401": "missing, unknown, revoked or expired API key (auth: keys)",
    "403": "the key lacks the role or route, or a policy rule or a guard refused",
    "404": "unknown model (route alias or engine)",
    "413": "body larger than server.max_body_bytes, or input over the route's max_input_chars",
    "415": "a body not declared Content-Type: application/json",
    "429": "rate limit or budget exceeded, or the tenant's share of the guards busy (Retry-After)",
    "502": "every engine of the chain failed; the message names each hop",
    "503": "overloaded (Retry-After) or no engine reachable",
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


@cache
def document() -> dict[str, Any]:
    request = ChatRequest.model_json_schema(ref_template=REF)
    schemas: dict[str, Any] = request.pop("$defs", {})
    request["properties"].update(_REQUEST_OVERRIDES)
    embedding_request = EmbeddingRequest.model_json_schema(ref_template=REF)
    schemas.update(embedding_request.pop("$defs", {}))
    schemas.update({
        "EmbeddingRequest": embedding_request, "EmbeddingList": EMBEDDING_LIST,
        "ChatRequest": request, "ChatCompletion": CHAT_COMPLETION, "ChatCompletionChunk": CHAT_CHUNK,
        "ChatCompletionEvent": SSE_EVENT, "Usage": USAGE, "Error": ERROR,
        "ModelList": MODEL_LIST, "Health": HEALTH, "Ready": READY,
        "Collection": COLLECTION, "CollectionDocuments": COLLECTION_DOCUMENTS,
        "CollectionDeleted": COLLECTION_DELETED, "Passages": PASSAGES,
    })
    from turnout.server.documents import AddBody, SearchBody

    for model in (AddBody, SearchBody):
        model_schema = model.model_json_schema(ref_template=REF)
        schemas.update(model_schema.pop("$defs", {}))
        schemas[model.__name__] = model_schema
    name_param = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}

    def op(op_id: str, ok: str, params: list[dict[str, Any]], body: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"operationId": op_id, "parameters": params, "responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": _ref(ok)}}},
            **{code: _error_response(text) for code, text in ERRORS.items()}}}
        if body:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        return out

    doc_param = {"name": "doc_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    collections = {
        "/v1/turnout/collections/{name}": {"get": op("getCollection", "Collection", [name_param]),
                                           "delete": op("deleteCollection", "CollectionDeleted", [name_param])},
        "/v1/turnout/collections/{name}/documents": {
            "post": op("addDocuments", "CollectionDocuments", [name_param], "AddBody")},
        "/v1/turnout/collections/{name}/documents/{doc_id}": {
            "delete": op("deleteDocument", "CollectionDeleted", [name_param, doc_param])},
        "/v1/turnout/collections/{name}/search": {
            "post": op("searchCollection", "Passages", [name_param], "SearchBody")},
    }
    chat_responses: dict[str, Any] = {
        "200": {
            "description": "the answer; with `stream: true`, server-sent `chat.completion.chunk` events "
                           "ending in `data: [DONE]` (or an error event if the engine fails mid-stream)",
            "content": {"application/json": {"schema": _ref("ChatCompletion")},
                        "text/event-stream": {"schema": _ref("ChatCompletionEvent")}},
        },
        **{code: _error_response(text) for code, text in ERRORS.items()},
    }
    schemas.update(_task_schemas())
    from turnout.server.session import LoginBody

    schemas.update({"LoginBody": LoginBody.model_json_schema(ref_template=REF), "Session": SESSION,
                    "SessionEnded": SESSION_ENDED})
    schemas.update(openapi_ops.schemas())
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "turnout", "version": __version__,
                 "description": "OpenAI-compatible hybrid LLM gateway. Errors are OpenAI-shaped."},
        "paths": {
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChatRequest")}}},
                "responses": chat_responses,
            }},
            "/v1/embeddings": {"post": {
                "operationId": "createEmbedding",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("EmbeddingRequest")}}},
                "responses": {
                    "200": {"description": "one vector per input, in order",
                            "content": {"application/json": {"schema": _ref("EmbeddingList")}}},
                    **{code: _error_response(text) for code, text in ERRORS.items()},
                },
            }},
            **collections,
            **_task_paths(),
            **_session_paths(),
            "/v1/models": {"get": {
                "operationId": "listModels",
                "responses": {"200": {"description": "route aliases and engines",
                                      "content": {"application/json": {"schema": _ref("ModelList")}}}},
            }},
            "/healthz": {"get": {
                "operationId": "health",
                "responses": {"200": {"description": "the process answers",
                                      "content": {"application/json": {"schema": _ref("Health")}}}},
            }},
            "/readyz": {"get": {
                "operationId": "ready",
                "responses": {
                    "200": {"description": "every engine is ready",
                            "content": {"application/json": {"schema": _ref("Ready")}}},
                    "503": {"description": "some engine is not ready",
                            "content": {"application/json": {"schema": _ref("Ready")}}},
                },
            }},
        },
        "components": {"schemas": schemas},
    }
    for path, operations in openapi_ops.paths(ERRORS, _error_response).items():
        doc["paths"].setdefault(path, {}).update(operations)
    return _secured(doc)


_MAYBE_NUMBER = {"type": ["number", "null"]}
_MAYBE_STRING = {"type": ["string", "null"]}
TASK_CREATED = {"type": "object", "required": ["object", "id", "state"],
                "properties": {"object": {"const": "task"}, "id": _STRING, "state": _STRING,
                               "budget_usd": _MAYBE_NUMBER, "local_only": _MAYBE_STRING}}
TASK = {"type": "object", "required": ["object", "id", "state", "goal", "steps", "gates", "cost_usd", "saved_usd"],
        "properties": {"object": {"const": "task"}, "id": _STRING, "state": _STRING, "goal": _STRING,
                       "steps": {"type": "array", "items": {"type": "object"}},
                       "gates": {"type": "array", "items": {"type": "object"}},
                       "cost_usd": {"type": "number"}, "saved_usd": {"type": "number"},
                       "budget_usd": _MAYBE_NUMBER, "failure": _MAYBE_STRING, "local_only": _MAYBE_STRING}}
TASK_LIST = {"type": "object", "required": ["object", "data"],
             "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"type": "object"}}}}
TASK_CANCELLED = {"type": "object", "required": ["object", "id", "cancel_requested"],
                  "properties": {"object": {"const": "task"}, "id": _STRING, "cancel_requested": {"type": "boolean"}}}
APPROVAL = {"type": "object", "required": ["object", "id", "state", "edited"],
            "properties": {"object": {"const": "approval"}, "id": _STRING, "state": _STRING,
                           "edited": {"type": "boolean"}}}


def _task_schemas() -> dict[str, Any]:
    from turnout.server.tasks import DecisionBody, TaskBody

    out: dict[str, Any] = {"TaskCreated": TASK_CREATED, "Task": TASK, "TaskList": TASK_LIST,
                           "TaskCancelled": TASK_CANCELLED, "Approval": APPROVAL}
    for model in (TaskBody, DecisionBody):
        model_schema = model.model_json_schema(ref_template=REF)
        out.update(model_schema.pop("$defs", {}))
        out[model.__name__] = model_schema
    return out


def _task_paths() -> dict[str, Any]:
    """Tasks and approvals (docs/tasks.md)."""
    def op(op_id: str, ok: str, params: list[dict[str, Any]], body: str | None = None, status: str = "200",
           extra: tuple[str, ...] = ()) -> dict[str, Any]:
        answers = {**ERRORS, "404": "no such task or approval in the caller's tenant",
                   "409": "the task already ended, or the approval was already decided"}
        out: dict[str, Any] = {"operationId": op_id, "parameters": params, "responses": {
            status: {"description": "ok", "content": {"application/json": {"schema": _ref(ok)}}},
            **{code: _error_response(answers[code]) for code in ("400", "401", "403", "404", "413", "415", *extra)}}}
        if body:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        return out

    task_id = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    gate_id = {"name": "gate_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    events = op("taskEvents", "Task", [task_id])
    events["responses"]["200"] = {"description": "server-sent events until the task ends",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    return {
        "/v1/turnout/tasks": {"post": op("createTask", "TaskCreated", [], "TaskBody", status="201"),
                              "get": op("listTasks", "TaskList", [])},
        "/v1/turnout/tasks/{task_id}": {"get": op("getTask", "Task", [task_id])},
        "/v1/turnout/tasks/{task_id}/events": {"get": events},
        "/v1/turnout/tasks/{task_id}/cancel": {"post": op("cancelTask", "TaskCancelled", [task_id], extra=("409",))},
        "/v1/turnout/approvals": {"get": op("listApprovals", "TaskList", [])},
        "/v1/turnout/approvals/{gate_id}": {"post": op("decideApproval", "Approval", [gate_id], "DecisionBody",
                                                       extra=("409",))},
    }


SESSION = {"type": "object", "required": ["object", "tenant", "roles", "expires_at"],
           "properties": {"object": {"const": "session"}, "key_id": _STRING, "tenant": _MAYBE_STRING,
                          "roles": {"type": "array", "items": _STRING}, "expires_at": _MAYBE_STRING,
                          "open": {"type": "boolean"}}}
SESSION_ENDED = {"type": "object", "required": ["object", "ended"],
                 "properties": {"object": {"const": "session.ended"}, "ended": {"type": "boolean"}}}


def _session_paths() -> dict[str, Any]:
    """The browser pages' login and logout (turnout.server.session): same origin only."""
    def op(op_id: str, ok: str, description: str, body: str | None = None) -> dict[str, Any]:
        codes = ("400", "401", "403", "413", "415") if body else ("403", "415")
        out: dict[str, Any] = {"operationId": op_id, "description": description, "responses": {
            "200": {"description": "ok; sets (or clears) the session cookie, `turnout_session`",
                    "content": {"application/json": {"schema": _ref(ok)}}},
            **{code: _error_response(ERRORS[code]) for code in codes}}}
        if body:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        return out

    return {
        "/dashboard/login": {"post": op("login", "Session", "an API key with role admin, viewer or approver in, "
                                        "an HttpOnly SameSite=Strict session cookie out", "LoginBody")},
        "/dashboard/logout": {"post": op("logout", "SessionEnded", "ends the session of the cookie sent")},
    }


def _secured(doc: dict[str, Any]) -> dict[str, Any]:
    """Each operation's security requirement and 401/403 answers, from ``turnout.server.authz``."""
    from turnout.server.authz import ENDPOINTS

    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key, tk-..."},
        "session": {"type": "apiKey", "in": "cookie", "name": "turnout_session",
                    "description": "the browser pages' login (POST /dashboard/login); same-origin requests only"},
    }
    for e in ENDPOINTS:
        operation = doc["paths"].get(e.path, {}).get(e.method.lower())
        if operation is None or not e.roles:
            continue
        operation["security"] = [{"bearer": []}, {"session": []}] if e.browser else [{"bearer": []}]
        operation["description"] = f"roles: {' or '.join(e.roles)}"
        for code in ("401", "403"):
            operation["responses"].setdefault(code, _error_response(ERRORS[code]))
    return doc


async def openapi_json(_: Request) -> Response:
    return JSONResponse(document())
