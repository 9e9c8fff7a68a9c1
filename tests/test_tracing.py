"""Tracing with an in-memory exporter: a root span per request, a child per pipeline step
and per engine call with GenAI attributes, and the trace id in the ledger and headers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from tests.conftest import Upstream
from turnout.config import parse_config
from turnout.server.app import create_app


@pytest.mark.usefixtures("clean_upstreams")
def test_spans_for_each_step_and_engine_call(tmp_path: Path, upstream: Upstream) -> None:
    cfg = parse_config({
        "engines": {"frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                                 "model": "fake-frontier"}},
        "routes": {"auto": {"chain": ["frontier"]}},
        "guards": {"enabled": False},
        "storage": {"sqlite_path": str(tmp_path / "l.sqlite")},
    })
    spans = InMemorySpanExporter()
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with TestClient(create_app(cfg, span_exporter=spans)) as client:
        resp = client.post("/v1/chat/completions", json={"model": "auto",
                                                         "messages": [{"role": "user", "content": "a b"}]},
                           headers={"traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01"})
        assert resp.status_code == 200
        trace_id = resp.headers["x-turnout-trace-id"]
        streamed = client.post("/v1/chat/completions", json={"model": "auto", "stream": True,
                                                             "messages": [{"role": "user", "content": "c"}]})
        assert streamed.status_code == 200 and "x-turnout-trace-id" in streamed.headers
    assert trace_id == parent_trace  # continues the caller's trace
    finished = spans.get_finished_spans()
    first = [s for s in finished if format(s.context.trace_id, "032x") == trace_id]
    names = {s.name for s in first}
    assert {"turnout.request", "turnout.authenticate", "turnout.decide",
            "turnout.reserve", "chat fake-frontier"} <= names
    call = next(s for s in first if s.name == "chat fake-frontier")
    assert call.attributes["gen_ai.system"] == "openai" and call.attributes["gen_ai.request.model"] == "fake-frontier"
    assert call.attributes["gen_ai.usage.input_tokens"] > 0 and call.attributes["gen_ai.usage.output_tokens"] > 0
    root = next(s for s in first if s.name == "turnout.request")
    assert all(s.parent is not None for s in first if s is not root)
    assert root.attributes["turnout.route"] == "auto" and root.attributes["http.response.status_code"] == 200
    assert sum(1 for s in finished if s.name == "turnout.request") == 2  # the stream's root span ended too
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        ids = [r[0] for r in conn.execute("SELECT trace_id FROM requests ORDER BY id")]
    assert ids[0] == trace_id and ids[1] and ids[1] != trace_id
