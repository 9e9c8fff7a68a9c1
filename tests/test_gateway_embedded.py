"""The embedded default (no configuration at all) and the policy guarantees that must hold
when things fail."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream, hybrid_config
from tests.runcli import run_cli

pytestmark = pytest.mark.usefixtures("clean_upstreams")


def test_no_config_serves_the_embedded_model(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = gateway_factory(None)
    client = gw.openai()
    assert {m.id for m in client.models.list()} >= {"auto", "private", "fast", "local"}
    done = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Name a color."}],
                                          max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    assert done.choices[0].message.content
    assert done.usage.prompt_tokens > 0 and 0 < done.usage.completion_tokens <= 8
    lp = done.choices[0].logprobs.content
    assert lp and all(e.logprob <= 0 for e in lp) and len(lp[0].top_logprobs) == 2
    chunks = list(client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=5, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5
    models = httpx.get(gw.url + "/v1/models").json()["data"]
    local = next(m for m in models if m["id"] == "local")["turnout"]
    assert local["license"] == "apache-2.0" and len(local["weights_sha256"]) == 64


def test_sensitive_request_never_reaches_remote_when_local_is_down(gateway_factory, upstream: Upstream,
                                                                  anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    cfg = hybrid_config(upstream.url, anthropic_upstream.url)
    cfg["engines"]["local"]["model_path"] = "/nonexistent/model.gguf"  # the local engine cannot start
    gw: Gateway = gateway_factory(cfg)
    client = gw.openai()
    for model in ("auto", "remote-only", "frontier"):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "my SSN is 123-45-6789"}],
                                           extra_headers={"x-turnout-sensitivity": "sensitive"})
        assert info.value.status_code == 503
        assert "local" in info.value.body["message"]
    for stream in (True,):
        with pytest.raises(openai.APIStatusError):
            list(client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}],
                                                stream=stream, extra_headers={"x-turnout-sensitivity": "restricted"}))
    assert upstream.requests() == [] and anthropic_upstream.requests() == []
    # an ordinary request still goes out, so the test above could have failed
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert len(upstream.requests()) == 1
    assert httpx.get(gw.url + "/readyz").status_code == 503


def test_sensitive_without_any_local_engine_is_refused(gateway_factory, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = gateway_factory({
        "engines": {"frontier": {"dialect": "openai", "locality": "remote",
                                 "base_url": upstream.url + "/v1", "model": "m"}},
        "routes": {"auto": {"chain": ["frontier"]}},
    })
    resp = httpx.post(gw.url + "/v1/chat/completions", headers={"x-turnout-sensitivity": "sensitive"},
                      json={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_local_engine"
    assert upstream.requests() == []


def test_circuit_opens_and_skips_a_failing_engine(  # type: ignore[no-untyped-def]
        gateway_factory, upstream: Upstream, anthropic_upstream: Upstream) -> None:
    cfg = hybrid_config(upstream.url, anthropic_upstream.url)
    cfg["engines"]["frontier"]["resilience"] = {**FAST_RESILIENCE, "retries": 0,
                                                "breaker_failures": 2, "breaker_probe": 60, "breaker_cooldown": 60}
    gw: Gateway = gateway_factory(cfg)
    upstream.default("500")
    client = gw.openai()
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="auto",
                                                               messages=[{"role": "user", "content": "x"}],
                                                               max_tokens=3)
        assert raw.headers["x-turnout-engine"] == "local"
    assert len(upstream.requests()) == 2  # the breaker opened after two failures
    ready = httpx.get(gw.url + "/readyz").json()
    assert ready["engines"]["frontier"]["ready"] is False and "circuit open" in ready["engines"]["frontier"]["detail"]


def test_body_over_the_limit_is_413(gateway_factory, upstream: Upstream, anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    cfg = hybrid_config(upstream.url, anthropic_upstream.url, server={"max_body_bytes": 2048})
    gw: Gateway = gateway_factory(cfg)
    big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]}
    resp = httpx.post(gw.url + "/v1/chat/completions", json=big)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
    # chunked upload without Content-Length is cut off too
    resp = httpx.post(gw.url + "/v1/chat/completions", content=iter([json.dumps(big).encode()]),
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert upstream.requests() == []


def test_config_check_names_file_key_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("engines:\n  x:\n    dialect: openai\n    locality: remote\n"
                   "    base_url: http://h/v1\n    modle: m\n"
                   "routes:\n  auto: {chain: [x]}\n")
    out = run_cli("config", "check", str(bad))
    assert out.returncode == 2
    assert str(bad) in out.stderr and "engines.x.modle" in out.stderr and "remove it" in out.stderr
    assert "engines.x.model" in out.stderr and "add it" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text(bad.read_text().replace("modle", "model"))
    out = run_cli("config", "check", str(good))
    assert out.returncode == 0 and "route auto: x" in out.stdout
    out = run_cli("config", "check", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "no such configuration file" in out.stderr


def test_usage_summarises_the_ledger(gateway_factory, upstream: Upstream, anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = gateway_factory(hybrid_config(upstream.url, anthropic_upstream.url))
    client = gw.openai()
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "a b c"}])
    client.chat.completions.create(model="private", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    out = run_cli("usage", "--db", str(gw.db), "--json", check=True)
    summary = json.loads(out.stdout)
    assert summary["total"]["requests"] == 2
    assert summary["routes"]["auto"]["cost_usd"] > 0 and summary["routes"]["private"]["local_share"] == 1.0
    assert summary["engines"]["frontier"]["requests"] == 1
    # local answers are priced at the engine's hourly cost for the seconds it was busy (so their
    # cost depends on the machine's speed); the baseline prices the same tokens at the priciest remote
    private = summary["routes"]["private"]
    assert private["cost_usd"] > 0 and private["baseline_cost_usd"] > 0
    assert private["saved_usd"] == pytest.approx(private["baseline_cost_usd"] - private["cost_usd"])
    table = run_cli("usage", "--db", str(gw.db), check=True).stdout
    assert "by route" in table and "frontier" in table


def test_chat_command_in_process_and_against_a_running_gateway(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cmd = ["chat", "Say hi.", "--max-tokens", "4"]
    out = run_cli(*cmd, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip()
    assert "route auto -> engine local (local)" in out.stderr
    gw: Gateway = gateway_factory(None)
    out = run_cli(*cmd, "--url", gw.url, "--model", "private")
    assert out.returncode == 0 and "route private -> engine local" in out.stderr
    bad = run_cli(*cmd, "--url", gw.url, "--model", "nope")
    assert bad.returncode == 1 and "error 404" in bad.stderr and "Traceback" not in bad.stderr
