"""Route strategies over real HTTP: a cascade that keeps or escalates the weak engine's
answer by its measured confidence, and a learned router trained on labelled outcomes."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream
from tests.runcli import run_cli

pytestmark = pytest.mark.usefixtures("clean_upstreams")


def strategy_config(up: str, tmp: Path, router: Path | None = None) -> dict:
    def fake(model: str) -> dict:
        return {"dialect": "openai", "locality": "remote", "base_url": up + "/v1", "model": model,
                "pricing": {"input_per_m": 1, "output_per_m": 2}, "resilience": dict(FAST_RESILIENCE)}

    routes = {
        "local-cascade": {"chain": ["local", "frontier"], "strategy": "cascade", "threshold": 0.0},
        "local-kept": {"chain": ["local", "frontier"], "strategy": "cascade", "threshold": -1000.0},
        "sure": {"chain": ["confident", "frontier"], "strategy": "cascade", "threshold": -1.0},
        "unsure": {"chain": ["hesitant", "frontier"], "strategy": "cascade", "threshold": -1.0},
        "unsure-draft": {"chain": ["hesitant", "frontier"], "strategy": "cascade",
                         "threshold": -1.0, "include_draft": True},
    }
    if router is not None:
        routes["smart"] = {"chain": ["confident", "frontier"], "strategy": "learned", "router": str(router)}
    return {
        "engines": {
            "local": {"dialect": "llamacpp", "n_ctx": 1024},
            "confident": fake("fake-weak@logprob=-0.05"),
            "hesitant": fake("fake-weak@logprob=-3.5"),
            "frontier": fake("fake-frontier"),
        },
        "routes": routes,
        "guards": {"enabled": False},
        "storage": {"sqlite_path": str(tmp / "ledger.sqlite")},
    }


def ask(gw: Gateway, model: str, text: str = "What is 2 + 2?", **kw: object) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=120,
                      json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 12, **kw})


def test_cascade_escalates_a_low_confidence_local_answer(gateway_factory, upstream: Upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = gateway_factory(strategy_config(upstream.url, tmp_path))
    resp = ask(gw, "local-cascade")
    assert resp.status_code == 200
    assert resp.headers["x-turnout-engine"] == "frontier" and resp.headers["x-turnout-strategy"] == "cascade"
    assert "cascade escalated: confidence" in resp.headers["x-turnout-reason"]
    assert resp.json()["choices"][0]["message"]["content"] == "echo: What is 2 + 2?"
    body = upstream.requests()[0]["body"]
    assert body["messages"] == [{"role": "user", "content": "What is 2 + 2?"}]  # the original context, nothing else
    row = gw.ledger()[-1]
    assert row["strategy"] == "cascade" and row["threshold"] == 0.0 and row["score"] < 0
    assert row["engine"] == "frontier" and "escalated" in row["reason"]
    signals = json.loads(row["signals"])  # every signal of the weak draft, for routers to learn from
    assert signals["answer_logprob"] == pytest.approx(row["score"], abs=1e-5)  # the default confidence_signal
    assert signals["min_logprob"] <= signals["mean_logprob"] and "verifier" in signals
    metrics = httpx.get(gw.url + "/metrics").text
    assert re.search(r'turnout_escalations_total\{route="local-cascade"\} 1\.0', metrics)

    kept = ask(gw, "local-kept")
    assert kept.headers["x-turnout-engine"] == "local" and "cascade kept local" in kept.headers["x-turnout-reason"]
    assert float(kept.headers["x-turnout-score"]) < 0
    assert len(upstream.requests()) == 1


def test_a_policy_rule_named_like_a_route_is_not_the_routes_own_chain(gateway_factory, upstream: Upstream,  # type: ignore[no-untyped-def]
                                                                       tmp_path: Path) -> None:
    """Whether the route's strategy applies is a field the router sets, not the rule's name: a
    policy rule called ``route:unsure`` chooses a chain that is tried in order, not cascaded."""
    cfg = strategy_config(upstream.url, tmp_path)
    del cfg["engines"]["local"]  # no embedded model needed here
    cfg["routes"] = {"unsure": cfg["routes"]["unsure"]}
    cfg["rules"] = [{"name": "route:unsure", "when": {"metadata": {"pin": "rule"}}, "chain": ["hesitant", "frontier"]}]
    gw: Gateway = gateway_factory(cfg)
    ruled = ask(gw, "unsure", metadata={"pin": "rule"})
    assert ruled.status_code == 200, ruled.text
    assert ruled.headers["x-turnout-strategy"] == "rules" and ruled.headers["x-turnout-engine"] == "hesitant"
    assert ruled.headers["x-turnout-reason"] == "rule 'route:unsure'"
    own = ask(gw, "unsure")  # the route's own chain: its cascade escalates the unsure draft
    assert own.headers["x-turnout-strategy"] == "cascade" and own.headers["x-turnout-engine"] == "frontier"
    assert own.headers["x-turnout-reason"] == "default chain of route:unsure; cascade escalated: confidence -3.500 < -1"
    assert [r["rule"] for r in gw.ledger()[-2:]] == ["route:unsure", "route:unsure"]
    # usage counts what the request was billed for: the weak draft too, reported as discarded (docs/reliability.md)
    assert "turnout" not in ruled.json()  # one engine billed: usage is its answer's
    usage, split = own.json()["usage"], own.json()["turnout"]["usage"]
    row = gw.ledger()[-1]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (row["prompt_tokens"], row["completion_tokens"])
    (draft, answer) = split["billed"]
    assert (draft["engine"], draft["delivered"], answer["engine"], answer["delivered"]) == (
        "hesitant", False, "frontier", True)
    assert split["discarded"] == {k: draft[k] for k in ("prompt_tokens", "completion_tokens")}
    assert usage["completion_tokens"] == draft["completion_tokens"] + answer["completion_tokens"] > answer[
        "completion_tokens"]
    assert row["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) / 1e6)


def test_the_reason_users_see_is_rendered_from_the_decisions_fields() -> None:
    from turnout.routing.decision import CascadeOutcome, Decision

    d = Decision(alias="auto", chain=["local", "frontier"], rule="route:auto", reason="default chain of route:auto")
    assert d.explanation == d.reason and not d.escalated
    d.cascade = CascadeOutcome("local", kept=True, confidence=-0.25, threshold=-1.0)
    assert d.explanation == "default chain of route:auto; cascade kept local: confidence -0.250 >= -1"
    assert not d.escalated and d.cascade.cause is None
    d.cascade = CascadeOutcome("local", kept=False, confidence=None, threshold=-1.0)
    assert d.explanation.endswith("; cascade escalated: confidence none < -1") and d.escalated
    assert d.cascade.cause == "confidence"
    d.cascade = CascadeOutcome("local", kept=False, failed=True, threshold=-1.0)
    assert d.explanation.endswith("; cascade: local failed, escalated") and d.cascade.cause == "failed"
    assert d.reason == "default chain of route:auto"  # the router's sentence is never appended to


def test_cascade_uses_the_weak_engines_logprobs_and_streams(  # type: ignore[no-untyped-def]
        gateway_factory, upstream: Upstream, tmp_path: Path) -> None:
    gw: Gateway = gateway_factory(strategy_config(upstream.url, tmp_path))
    sure = ask(gw, "sure")
    assert sure.headers["x-turnout-engine"] == "confident"
    # asked of the weak engine, not shown to a client who did not ask
    assert sure.json()["choices"][0]["logprobs"] is None
    unsure = ask(gw, "unsure")
    assert unsure.headers["x-turnout-engine"] == "frontier"
    assert abs(float(unsure.headers["x-turnout-score"]) + 3.5) < 1e-6

    for model, engine in (("sure", "confident"), ("unsure", "frontier")):
        with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=60, json={
                "model": model, "messages": [{"role": "user", "content": "tell me"}], "stream": True}) as resp:
            assert resp.headers["x-turnout-engine"] == engine
            lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        import json

        text = "".join((json.loads(ln[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                       for ln in lines[:-1])
        assert text == "echo: tell me"

    upstream.reset()
    ask(gw, "unsure-draft")
    strong = [r["body"] for r in upstream.requests() if r["body"]["model"] == "fake-frontier"][0]
    assert strong["messages"][-1]["role"] == "system" and "<draft>" in strong["messages"][-1]["content"]


def test_learned_router_sends_hard_prompts_to_the_strong_engine(  # type: ignore[no-untyped-def]
        gateway_factory, upstream: Upstream, tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = []
    for i in range(400):  # the weak model fails exactly on proofs; both pass arithmetic
        hard = i % 2 == 0
        topic = (rng.choice(["prove that the group", "prove the theorem on", "give a rigorous proof that"]) if hard
                 else rng.choice(["add the numbers", "what is the sum of", "compute the total of"]))
        rows.append((f"{topic} {rng.randint(1, 10_000)} and {rng.randint(1, 10_000)}", 0 if hard else 1, 1))
    data = tmp_path / "outcomes.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "weak_correct", "strong_correct"])
        w.writerows(rows)
    artifact = tmp_path / "router.npz"
    run_cli("eval", "router", "--dataset", str(data), "--router", "tfidf-lr", "--save-artifact", str(artifact),
            "--target-escalation", "0.5", "--json", check=True)
    gw: Gateway = gateway_factory(strategy_config(upstream.url, tmp_path, router=artifact))
    hard = ask(gw, "smart", "prove that the group 17 and 4242")
    easy = ask(gw, "smart", "what is the sum of 17 and 4242")
    assert hard.headers["x-turnout-engine"] == "frontier" and hard.headers["x-turnout-strategy"] == "learned"
    assert easy.headers["x-turnout-engine"] == "confident"
    assert float(hard.headers["x-turnout-score"]) > float(easy.headers["x-turnout-score"])
    rows_ = gw.ledger()
    assert rows_[-2]["strategy"] == "learned" and rows_[-2]["threshold"] is not None
