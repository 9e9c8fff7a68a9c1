"""A cascade with the real Qwen2.5-Coder-0.5B-Instruct as its weak engine, end to end over HTTP:
the gateway loads the model assembled from the six PyPI packages (extra ``qwen``), answers a
GSM8K question locally, and escalates to the loopback frontier when the answer's confidence is
under the route's threshold. Skipped, saying how to install it, where the extra is absent."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream

pytestmark = pytest.mark.usefixtures("clean_upstreams")


def qwen_or_skip() -> None:
    from turnout.engines import qwen_coder

    try:
        qwen_coder.parts()
    except FileNotFoundError as exc:
        pytest.skip(f"Qwen2.5-Coder-0.5B is not installed ({exc}); `pip install 'turnout[qwen]'` runs this test")


QUESTION = "Tom has 3 boxes with 4 pens in each box. How many pens does he have?"


def test_qwen_cascade_keeps_a_confident_answer_and_escalates_an_unsure_one(
        gateway_factory, upstream: Upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    qwen_or_skip()
    frontier = {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1", "model": "fake-frontier",
                "pricing": {"input_per_m": 1, "output_per_m": 2}, "resilience": dict(FAST_RESILIENCE)}
    slow = {**FAST_RESILIENCE, "timeout": 300, "first_token_timeout": 300, "idle_timeout": 300, "retries": 0}
    cascade = {"chain": ["qwen", "frontier"], "strategy": "cascade"}
    gw: Gateway = gateway_factory({
        "engines": {"qwen": {"dialect": "llamacpp", "packaged": "qwen2.5-coder-0.5b", "n_ctx": 512, "n_threads": 1,
                             "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                             "resilience": slow},
                    "frontier": frontier},
        # thresholds below and above any log-probability
        "routes": {"keep": {**cascade, "threshold": -1000.0}, "escalate": {**cascade, "threshold": 1.0}},
        "guards": {"enabled": False},
        "storage": {"sqlite_path": str(tmp_path / "ledger.sqlite")},
    })
    ask = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "temperature": 0}
    kept = httpx.post(gw.url + "/v1/chat/completions", timeout=600, json={"model": "keep", **ask})
    assert kept.status_code == 200, kept.text
    assert kept.headers["x-turnout-engine"] == "qwen" and "cascade kept qwen" in kept.headers["x-turnout-reason"]
    body = kept.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert body["model"] == "qwen2.5-coder-0.5b-instruct"
    conf = float(kept.headers["x-turnout-score"])
    assert -1000.0 < conf <= 0.0  # a real log-probability, from the model's own token record
    assert upstream.requests() == []

    escalated = httpx.post(gw.url + "/v1/chat/completions", timeout=600, json={"model": "escalate", **ask})
    assert escalated.status_code == 200, escalated.text
    assert escalated.headers["x-turnout-engine"] == "frontier"
    assert "cascade escalated" in escalated.headers["x-turnout-reason"]
    assert escalated.json()["choices"][0]["message"]["content"].startswith("echo: Tom has 3 boxes")  # cut at max_tokens
    sent = upstream.requests()[0]["body"]
    assert sent["messages"] == [{"role": "user", "content": QUESTION}]  # the original context, nothing else
    assert float(escalated.headers["x-turnout-score"]) == pytest.approx(conf, abs=1e-6)  # the same greedy answer
    row = gw.ledger()[-1]
    assert row["strategy"] == "cascade" and row["engine"] == "frontier" and "escalated" in row["reason"]
