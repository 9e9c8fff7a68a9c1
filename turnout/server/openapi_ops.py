"""The OpenAPI paths beside inference (``turnout.server.openapi`` holds those): feedback, usage
and function reports, the running configuration, API keys, pools, the dashboard and the
browser pages. Request bodies are the handlers' own pydantic models, so the document states
the validation the server runs; 401 and 403 come from ``turnout.server.authz`` (``_secured``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

REF = "#/components/schemas/{model}"

_STRING = {"type": "string"}
_OBJ = {"type": "object"}
_MAYBE_STRING = {"type": ["string", "null"]}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_MAYBE_INT = {"type": ["integer", "null"]}

FEEDBACK = {"type": "object", "required": ["object", "request_id", "kind", "value", "satisfaction"],
            "properties": {"object": {"const": "feedback"}, "request_id": _STRING, "kind": _STRING,
                           "value": {"type": "integer"}, "satisfaction": {"type": "number"},
                           "comment": _MAYBE_STRING}}
API_KEY = {"type": "object", "required": ["object", "key_id", "tenant", "hint", "roles", "active", "expired"],
           "description": "a key as stored: never its secret",
           "properties": {"object": {"const": "api_key"}, "key_id": _STRING, "tenant": _STRING, "hint": _STRING,
                          "routes": {"type": "array", "items": _STRING},
                          "roles": {"type": "array", "items": _STRING},
                          "limits": {"type": "object", "properties": {
                              "rpm": _MAYBE_INT, "tpm": _MAYBE_INT, "usd_per_day": _MAYBE_NUMBER,
                              "usd_per_month": _MAYBE_NUMBER}},
                          "created_at": _STRING, "revoked_at": _MAYBE_STRING, "expires_at": _MAYBE_STRING,
                          "owner": _MAYBE_STRING, "all_tenants": {"type": "boolean"},
                          "active": {"type": "boolean"}, "expired": {"type": "boolean"}}}
API_KEY_SECRET = {"allOf": [{"$ref": "#/components/schemas/ApiKey"},
                            {"type": "object", "required": ["key"], "properties": {"key": {
                                **_STRING, "description": "the secret, shown this once: tk-..."}}}]}
API_KEY_LIST = {"type": "object", "required": ["object", "data"],
                "properties": {"object": {"const": "list"},
                               "data": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}}}
USAGE_REPORT = {"type": "object", "required": ["object", "tenant", "hours"],
                "description": "usage and cost per route and engine (turnout.ledger.usage.summarize)",
                "properties": {"object": {"const": "usage"}, "tenant": _MAYBE_STRING, "hours": _MAYBE_NUMBER},
                "additionalProperties": True}
REPORT = {"type": "object", "description": "the report of `turnout functions report`", "additionalProperties": True}
STATS = {"type": "object", "description": "the dashboard's figures (turnout.ledger.stats)",
         "additionalProperties": True}
POOL_ENDPOINT = {"type": "object", "required": ["name", "state", "in_flight"],
                 "description": "one endpoint of a pool engine (turnout.engines.pool)",
                 "properties": {"object": {"const": "pool_endpoint"}, "engine": _STRING, "name": _STRING,
                                "state": {"enum": ["up", "ejected", "draining"]}, "in_flight": {"type": "integer"},
                                "weight": {"type": "number"}, "max_concurrency": {"type": "integer"},
                                "served": {"type": "integer"}, "failed": {"type": "integer"},
                                "ejections": {"type": "integer"}, "readmissions": {"type": "integer"},
                                "server": {"type": ["object", "null"], "additionalProperties": True}}}
POOL_LIST = {"type": "object", "required": ["object", "data"],
             "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
                 "type": "object", "properties": {
                     "engine": _STRING, "balance": _STRING, "waiting": {"type": "integer"},
                     "spills": {"type": "integer"},
                     "endpoints": {"type": "array", "items": {"$ref": "#/components/schemas/PoolEndpoint"}}}}}}}
CONFIG = {"type": "object", "description": "the running configuration, secrets masked",
          "additionalProperties": True}

TENANT = {"name": "tenant", "in": "query", "required": False, "schema": _STRING,
          "description": "an all-tenants admin key: one tenant's figures (default: every tenant's); "
                         "any other key sees its own tenant"}
HOURS = {"name": "hours", "in": "query", "required": False,
         "schema": {"type": "number", "exclusiveMinimum": 0}, "description": "the last N hours (default: all)"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas() -> dict[str, Any]:
    from turnout.server.admin import CreateBody, RotateBody
    from turnout.server.feedback import FeedbackBody

    out: dict[str, Any] = {"Feedback": FEEDBACK, "ApiKey": API_KEY, "ApiKeySecret": API_KEY_SECRET,
                           "ApiKeyList": API_KEY_LIST, "UsageReport": USAGE_REPORT, "FunctionReport": REPORT,
                           "DashboardStats": STATS, "RunningConfig": CONFIG, "PoolEndpoint": POOL_ENDPOINT,
                           "PoolList": POOL_LIST}
    models: tuple[type[BaseModel], ...] = (FeedbackBody, CreateBody, RotateBody)
    for model in models:
        model_schema = model.model_json_schema(ref_template=REF)
        out.update(model_schema.pop("$defs", {}))
        out[model.__name__] = model_schema
    return out


def paths(errors: dict[str, str], error_response: Any) -> dict[str, Any]:
    """``errors``: status -> description (``openapi.ERRORS``); ``error_response(text)`` the answer."""
    def op(op_id: str, ok: str, params: list[dict[str, Any]], codes: tuple[str, ...], body: str | None = None,
           status: str = "200", required: bool = True, **why: str) -> dict[str, Any]:
        answers = {**errors, **{code.removeprefix("e"): text for code, text in why.items()}}
        out: dict[str, Any] = {"operationId": op_id, "parameters": params, "responses": {
            status: {"description": "ok", "content": {"application/json": {"schema": _ref(ok)}}},
            **{code: error_response(answers[code]) for code in codes}}}
        if body:
            out["requestBody"] = {"required": required, "content": {"application/json": {"schema": _ref(body)}}}
        return out

    def page(op_id: str, what: str) -> dict[str, Any]:
        return {"operationId": op_id, "responses": {"200": {"description": what, "content": {
            "text/html": {"schema": _STRING}}}}}

    key_id = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    engine = {"name": "engine", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    endpoint = {"name": "endpoint", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    no_endpoint = "no pool engine of that name, or no endpoint of that name in it"
    body_codes = ("400", "413", "415")
    no_key = "no API key with that id in the caller's tenant"
    return {
        "/v1/feedback": {"post": op("createFeedback", "Feedback", [], (*body_codes, "404"), "FeedbackBody",
                                    e404="no request with that id made by the caller's key")},
        "/v1/turnout/usage": {"get": op("getUsage", "UsageReport", [HOURS, TENANT], ("400",))},
        "/v1/turnout/functions/{name}/report": {"get": op(
            "getFunctionReport", "FunctionReport", [name, TENANT], ("404", "503"), e404="no function of that name",
            e503="the ledger is not open")},
        "/v1/turnout/config": {"get": op("getConfig", "RunningConfig", [], ())},
        "/v1/turnout/keys": {"get": op("listKeys", "ApiKeyList", [TENANT], ()),
                             "post": op("createKey", "ApiKeySecret", [], body_codes, "CreateBody", status="201")},
        "/v1/turnout/keys/{key_id}": {"delete": op("revokeKey", "ApiKey", [key_id], ("404",), e404=no_key)},
        "/v1/turnout/keys/{key_id}/rotate": {"post": op(
            "rotateKey", "ApiKeySecret", [key_id], (*body_codes, "404"), "RotateBody", required=False,
            e404=no_key)},
        "/v1/turnout/pools": {"get": op("listPools", "PoolList", [], ())},
        "/v1/turnout/pools/{engine}/{endpoint}/drain": {"post": op(
            "drainEndpoint", "PoolEndpoint", [engine, endpoint], ("404",), e404=no_endpoint)},
        "/v1/turnout/pools/{engine}/{endpoint}/resume": {"post": op(
            "resumeEndpoint", "PoolEndpoint", [engine, endpoint], ("404",), e404=no_endpoint)},
        "/v1/dashboard/stats": {"get": op("getDashboardStats", "DashboardStats", [HOURS, TENANT], ("400",))},
        "/metrics": {"get": {"operationId": "metrics", "responses": {"200": {
            "description": "Prometheus metrics: a metrics key every tenant's, a viewer key its own tenant's",
            "content": {"text/plain": {"schema": _STRING}}}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "responses": {"200": {
            "description": "this document", "content": {"application/json": {"schema": _OBJ}}}}}},
        "/dashboard": {"get": page("dashboardPage", "the dashboard page; its figures come from /v1/dashboard/stats")},
        "/dashboard/approvals": {"get": page("approvalsPage", "the approver inbox page; its data comes from "
                                                              "/v1/turnout/approvals")},
        "/dashboard/login": {"get": page("loginPage", "the login page of the browser pages")},
    }
