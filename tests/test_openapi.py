"""The OpenAPI document against the app it describes: every route the app serves (and every row
of the role table, ``turnout.server.authz.ENDPOINTS``) is documented, and nothing else is, so
the document cannot drift from the routes again. No process is started: the app is built, not
run (its engines and stores open in the lifespan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from turnout.config import parse_config
from turnout.server.app import create_app
from turnout.server.authz import ENDPOINTS
from turnout.server.openapi import document


def _served(tmp_path: Path) -> set[tuple[str, str]]:
    cfg = parse_config({
        "engines": {"frontier": {"dialect": "openai", "locality": "remote", "base_url": "http://127.0.0.1:9/v1",
                                 "model": "m"}},
        "routes": {"auto": {"chain": ["frontier"]}},
        "storage": {"sqlite_path": str(tmp_path / "l.sqlite")},
    })
    routes: list[Any] = create_app(cfg).app.router.routes
    return {(m, r.path) for r in routes for m in r.methods if m != "HEAD"}


def _documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in document()["paths"].items() for method in ops}


def test_every_route_of_the_app_is_in_the_openapi_document(tmp_path: Path) -> None:
    served, documented = _served(tmp_path), _documented()
    assert len(served) > 30  # the app's routes were found (a check on the check)
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_the_role_table_and_the_document_name_the_same_endpoints() -> None:
    assert {(e.method, e.path) for e in ENDPOINTS} == _documented()


def test_each_operation_that_needs_a_role_says_so_and_documents_its_refusals() -> None:
    doc = document()
    for e in ENDPOINTS:
        op = doc["paths"][e.path][e.method.lower()]
        assert op["operationId"]
        if e.roles:
            assert op["security"] and {"401", "403"} <= set(op["responses"]), (e.method, e.path)
        else:
            assert "security" not in op, (e.method, e.path)


def test_the_request_bodies_are_the_handlers_models() -> None:
    from turnout.server.admin import CreateBody
    from turnout.server.feedback import FeedbackBody

    doc = document()
    schemas = doc["components"]["schemas"]
    assert schemas["FeedbackBody"] == FeedbackBody.model_json_schema(ref_template="#/components/schemas/{model}")
    assert set(schemas["CreateBody"]["properties"]) == set(CreateBody.model_fields)
    body = doc["paths"]["/v1/turnout/keys"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CreateBody"}
    assert "201" in doc["paths"]["/v1/turnout/keys"]["post"]["responses"]
