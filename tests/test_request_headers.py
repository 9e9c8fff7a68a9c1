"""Request headers the gateway reads are validated like the body: a bad value is a 400 with an
OpenAI-shaped error on every endpoint, recorded, and nothing is sent to an engine."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_RESILIENCE, Upstream


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "remote", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "remote", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/embeddings", {"model": "remote", "input": ["hi"]}),
])
def test_a_bad_sensitivity_label_is_a_400_and_goes_nowhere(gateway_factory, upstream: Upstream, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                           path: str, body: dict) -> None:  # type: ignore[type-arg]
    engine = {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1", "model": "fake-frontier",
              "embedding_model": "fake-embed", "resilience": dict(FAST_RESILIENCE)}
    gw = gateway_factory({"engines": {"remote": engine}, "routes": {}, "guards": {"enabled": False},
                          "storage": {"sqlite_path": str(tmp_path / "l.sqlite")}})
    resp = httpx.post(gw.url + path, json=body, headers={"x-turnout-sensitivity": "top-secret"}, timeout=30)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "x-turnout-sensitivity" and "top-secret" in err["message"]
    assert resp.headers["x-request-id"]
    assert upstream.requests() == []
    row = gw.ledger()[-1]
    assert row["http_status"] == 400 and row["request_id"] == resp.headers["x-request-id"]
