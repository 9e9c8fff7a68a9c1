"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis).

A real gateway process whose engine is the loopback OpenAI-wire upstream (fast, no model)
is fuzzed through ``GET /openapi.json``, in ``auth: keys`` mode with a user key (schemathesis's
ignored-auth check also sends each case without it and expects a 401): every response must be a
non-5xx with the documented
status, content type and schema, schema-violating requests must be rejected with a 4xx, and
the gateway must log no traceback. Most generated chat requests name the route ``auto`` so
that they reach the engine instead of stopping at 404.

The CI run is small (``TURNOUT_FUZZ_EXAMPLES``, default 25 per operation and phase);
``python bench/fuzz.py`` runs the same test with many more examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import Gateway, Upstream, _factory
from tests.runcli import run_cli
from turnout.testing.procs import Proc, start_server

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    started: list[Proc] = []
    with start_server("turnout.testing.upstream", "--model", "fake-frontier") as proc:
        up = Upstream(proc)
        cfg = {
            "engines": {"frontier": {"dialect": "openai", "locality": "remote", "base_url": up.url + "/v1",
                                     "model": "fake-frontier", "embedding_model": "fake-embed",
                                     "resilience": {"retries": 0}}},
            "routes": {"auto": {"chain": ["frontier"]}},
            "server": {"max_in_flight": 10_000},
            # a detector overrunning its budget fails closed with a 503 (tested in test_guards_gateway.py);
            # on a loaded machine 30 odd strings can take longer than the default 250 ms
            "guards": {"budget_ms": 10_000},
            "auth": "keys",  # every documented operation declares its security; schemathesis checks it holds
        }
        gw = _factory(tmp_path_factory.mktemp("fuzz"), started)(cfg)
        yield gw
        for p in started:
            p.stop()
        assert "Traceback" not in gw.proc.output(), gw.proc.output()[-4000:]


@pytest.fixture(scope="module")
def fuzz_key(fuzz_gateway: Gateway) -> str:
    """A user key, made after the gateway started (a new key works at once)."""
    import json

    out = run_cli("keys", "--db", str(fuzz_gateway.db), "create", "--tenant", "fuzz", "--json", check=True)
    return str(json.loads(out.stdout)["key"])


@pytest.fixture(scope="module")
def api_schema(fuzz_gateway: Gateway) -> Any:
    from schemathesis.config import SchemathesisConfig
    from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES

    # A schema-violating body can also be too large (a text past maxLength, repeated): the
    # documented 413 is then a rejection as good as a 400.
    rejections = [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": rejections}}})
    return schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json", config=config)


def _mostly_a_known_model(case: Any, mode: Any) -> None:
    """Point two thirds of the well-formed chat and embedding bodies at a real route (the rest keep their
    random model name and must get a clean 404)."""
    body = case.body
    if (mode is schemathesis.GenerationMode.POSITIVE and case.path in ("/v1/chat/completions", "/v1/embeddings")
            and isinstance(body, dict) and isinstance(body.get("model"), str) and len(body["model"]) % 3 != 0):
        body["model"] = "auto"


def _only_configured_tools(case: Any, mode: Any) -> None:
    """A task may only name tools of turnout.yaml (none here); a schema cannot list them, so a
    well-formed task body names none (the 400 for an unknown tool is in tests/test_tasks.py)."""
    if (mode is schemathesis.GenerationMode.POSITIVE and case.path == "/v1/turnout/tasks"
            and isinstance(case.body, dict) and "tools" in case.body):
        case.body["tools"] = []


def _declare_the_chosen_tool(case: Any, mode: Any) -> None:
    """Two rules of tool_choice span fields, which a JSON schema cannot state (see
    ``turnout.protocol``): ``"required"`` needs tools and a named choice must name a declared
    function. A well-formed chat body that breaks them gets the tool it chose, so that positive
    cases stay valid; the 400s for breaking them are tested in tests/test_embedded_tools.py."""
    body = case.body
    if (mode is not schemathesis.GenerationMode.POSITIVE or case.path != "/v1/chat/completions"
            or not isinstance(body, dict)):
        return
    choice, tools = body.get("tool_choice"), body.get("tools") or []
    if choice == "required" and not tools:
        body["tools"] = [{"type": "function", "function": {"name": "chosen"}}]
    elif isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in {t.get("function", {}).get("name") for t in tools if t.get("type") == "function"}:
            body["tools"] = [*tools, {"type": "function", "function": {"name": name}}]


NO_PARAMETERS = ["GET /v1/models", "GET /healthz", "GET /readyz", "GET /v1/turnout/tasks"]
COLLECTIONS = ["POST /v1/turnout/collections/{name}/documents", "POST /v1/turnout/collections/{name}/search",
               "GET /v1/turnout/collections/{name}", "DELETE /v1/turnout/collections/{name}",
               "DELETE /v1/turnout/collections/{name}/documents/{doc_id}"]
TASKS = ["POST /v1/turnout/tasks", "GET /v1/turnout/tasks/{task_id}",
         "POST /v1/turnout/tasks/{task_id}/cancel"]
OPERATIONS = ["POST /v1/chat/completions", "POST /v1/embeddings", *COLLECTIONS, *TASKS, *NO_PARAMETERS]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize("label", OPERATIONS)
def test_api_conforms_to_its_openapi_document(api_schema: Any, fuzz_gateway: Gateway, fuzz_key: str, label: str,
                                              mode: Any) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    if mode is schemathesis.GenerationMode.NEGATIVE and label in NO_PARAMETERS:
        pytest.skip("nothing to violate: no parameters")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], database=None)
    def run(case: Any) -> None:
        _mostly_a_known_model(case, mode)
        _declare_the_chosen_tool(case, mode)
        _only_configured_tools(case, mode)
        case.call_and_validate(base_url=fuzz_gateway.url, timeout=30, headers={"Authorization": f"Bearer {fuzz_key}"})

    run()


def test_openapi_document_describes_the_wire_models(fuzz_gateway: Gateway) -> None:
    import httpx

    doc = httpx.get(fuzz_gateway.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/healthz", "/readyz",
            *(op.split(" ", 1)[1] for op in COLLECTIONS), "/v1/turnout/tasks"} <= set(doc["paths"])
    # every route of the app is documented: tests/test_openapi.py
    assert doc["paths"]["/v1/turnout/approvals/{gate_id}"]["post"]["description"] == "roles: approver"
    request = doc["components"]["schemas"]["ChatRequest"]
    assert {"model", "messages"} <= set(request["required"]) and request["additionalProperties"] is True
    choices = request["properties"]["tool_choice"]["anyOf"]
    assert {"enum": ["none", "auto", "required"]} in choices  # what the validator accepts, not any string
    error = doc["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]
