"""The learning loop in the running gateway (issue 18), over real sockets: a learned route's weak
answers are shadowed by its strong engine after the client has its answer, an exact-answer judge
labels them in the gateway's SQLite file (pseudonymized prompt; never a sensitive request), the
drift gauges show on /metrics, `turnout router fit --from-traffic` promotes a better router and
refuses a worse one, rollback serves the first again; a broken artifact is served by the rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_RESILIENCE
from tests.runcli import run_cli
from tests.test_learning_loop import ENV, router_on, synthetic, write_outcomes
from turnout.ledger.labels import Label, SQLiteLabels
from turnout.routing.artifacts import Registry, resolve
from turnout.routing.learned import LearnedRouter
from turnout.testing.procs import Proc, control, start_server

EMAIL = "bob.smith@example.com"
STRONG_DELAY_MS = 1500


@pytest.fixture
def fakes() -> Iterator[tuple[Proc, Proc]]:
    """A weak upstream (answers at once) and a strong one (each answer delayed)."""
    with start_server("turnout.testing.upstream") as weak, start_server("turnout.testing.upstream") as strong:
        yield weak, strong


def config(weak: str, strong: str, router: Path, *, guards: bool, shadow: bool = True) -> dict[str, Any]:
    def fake(url: str, model: str, locality: str) -> dict[str, Any]:
        return {"dialect": "openai", "locality": locality, "base_url": url + "/v1", "model": model,
                "pricing": {"input_per_m": 1, "output_per_m": 2}, "resilience": dict(FAST_RESILIENCE)}

    route: dict[str, Any] = {"chain": ["small", "big"], "strategy": "learned", "router": str(router),
                             "threshold": 0.999, "target_escalation": 0.1}  # the first 50 go weak
    if shadow:
        route["shadow"] = {"share": 1.0, "daily_budget_usd": 1.0, "sampling": "uniform", "judge": "exact"}
    return {"engines": {"small": fake(weak, "fake-small", "local"), "big": fake(strong, "fake-big", "remote")},
            "routes": {"auto": route}, "guards": {"enabled": guards}}


def ask(url: str, text: str, **headers: str) -> httpx.Response:
    r = httpx.post(url + "/v1/chat/completions", timeout=60, headers=headers,
                   json={"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 16})
    assert r.status_code == 200, r.text
    return r


def labels_of(db: Path, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        store = SQLiteLabels(db)
        rows = store.rows()
        store._conn.close()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def served_score(url: str, prompt: str) -> float:
    return float(ask(url, prompt).headers["x-turnout-score"])


def test_shadow_labels_fit_promote_refuse_rollback(gateway_factory, fakes: tuple[Proc, Proc],  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    weak, strong = fakes
    reg = Registry(tmp_path / "routers" / "auto")
    reg.promote(reg.add(router_on(synthetic(300, seed=8))))
    control(weak.url, "scenarios", {"replies": {"fake-small": ["The answer is 4.", "I think it is 5",
                                                               "#### 4", "4, surely"]}})
    control(strong.url, "scenarios", {"delay_ms": STRONG_DELAY_MS, "replies": {"fake-big": ["#### 4"] * 10}})

    gw = gateway_factory(config(weak.url, strong.url, reg.folder, guards=True))
    prompts = [f"What is 2 + 2? Reply to {EMAIL}", "What is 2 + 2, roughly?"]
    sent: dict[str, float] = {}
    for p in prompts:
        r = ask(gw.url, p)
        sent[r.headers["x-request-id"]] = time.time()  # the client has its answer
        assert r.headers["x-turnout-engine"] == "small" and "(tracked)" in r.headers["x-turnout-reason"]
        assert not labels_of(gw.db, 1, timeout=0)  # ...and the strong engine (1.5 s) has not answered yet
    secret = ask(gw.url, "What is 2 + 2 for the board?", **{"x-turnout-sensitivity": "sensitive"})
    assert secret.headers["x-turnout-engine"] == "small"
    # the learned router's sentence replaces the rules', never the confinement note after it
    assert "confined to local engines (sensitive)" in secret.headers["x-turnout-reason"], secret.headers

    rows = labels_of(gw.db, 2)
    assert len(rows) == 2
    by_id = {r["request_id"]: r for r in rows}
    assert set(by_id) == set(sent)  # none for the sensitive request
    for rid, row in by_id.items():
        assert row["source"] == "shadow" and row["judge"] == "exact-answer" and row["strong_score"] == 1.0
        assert row["weak_engine"] == "small" and row["strong_engine"] == "big"
        assert row["ts"] > sent[rid]  # labelled after the client had its answer
    first, second = (by_id[rid] for rid in sent)
    assert EMAIL not in first["prompt"] and "<EMAIL" in first["prompt"]  # the pseudonymized copy
    assert (first["weak_score"], second["weak_score"]) == (1.0, 0.0)  # 4 == 4; 5 != 4
    strong_log = control(strong.url, "requests")
    assert all(EMAIL not in json.dumps(e) for e in strong_log)  # the shadow call went out pseudonymized

    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    assert re.search(r'turnout_shadow_requests\{result="labelled",route="auto",tenant="anonymous"\} 2\.0', metrics)
    assert re.search(r'turnout_router_threshold\{kind="served",route="auto"\} 0\.999', metrics)
    assert 'turnout_router_target_escalation{route="auto"} 0.1' in metrics

    last = ask(gw.url, "What is 2 + 2 in total?")  # shutdown waits for its shadow call
    gw.proc.stop(timeout=15)
    rows = labels_of(gw.db, 3, timeout=0)
    assert last.headers["x-request-id"] in {r["request_id"] for r in rows} and len(rows) == 3

    # more traffic labelled over the days: the weak engine fails the easy topics instead
    store = SQLiteLabels(gw.db)
    traffic = synthetic(240, seed=7, flip=True)
    for i, (p, w, s) in enumerate(zip(traffic.prompts, traffic.weak, traffic.strong, strict=True)):
        store.add_sync(Label("acme", "auto", p, "small", "big", "shadow", "labels", w, s, f"t{i}", ts=1000.0 + i))
    store._conn.close()
    common = ["--alias", "auto", "--registry", str(reg.folder), "--db", str(gw.db), "--family", "tfidf-lr"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("router", *args, env=ENV, cwd=tmp_path)

    fit = cli("fit", "--from-traffic", *common, "--json")
    assert fit.returncode == 0, fit.stderr
    assert json.loads(fit.stdout)["promoted"] is True and resolve(reg.folder).name == "r0002.npz"
    assert LearnedRouter.load(resolve(reg.folder)).metadata["training_data"]["labels_by_source"] == {"shadow": 243}

    noisy = tmp_path / "opposite.csv"
    public = synthetic(2000, seed=9)
    write_outcomes(noisy, public)
    store = SQLiteLabels(gw.db)  # newer labels: the gate compares only on labels r0002 never learned from
    newer = synthetic(60, seed=17, flip=True)
    for i, (p, w, s) in enumerate(zip(newer.prompts, newer.weak, newer.strong, strict=True)):
        store.add_sync(Label("acme", "auto", p, "small", "big", "shadow", "labels", w, s, f"n{i}", ts=time.time() + i))
    store._conn.close()
    worse = cli("fit", "--from-traffic", *common, "--warm-start", str(noisy))
    assert worse.returncode == 3 and "refused r0003" in worse.stdout, worse.stderr + worse.stdout
    assert resolve(reg.folder).name == "r0002.npz"

    probe = "explain the river and the city and the fruit please"
    gw2 = gateway_factory(config(weak.url, strong.url, reg.folder, guards=False, shadow=False))
    assert served_score(gw2.url, probe) == pytest.approx(LearnedRouter.load(reg.folder / "r0002.npz").score(probe),
                                                         abs=1e-3)
    gw2.proc.stop()
    back = cli("rollback", "--alias", "auto", "--registry", str(reg.folder))
    assert back.returncode == 0 and "now serving r0001.npz" in back.stdout
    gw3 = gateway_factory(config(weak.url, strong.url, reg.folder, guards=False, shadow=False))
    r1 = LearnedRouter.load(reg.folder / "r0001.npz").score(probe)
    assert abs(r1 - LearnedRouter.load(reg.folder / "r0002.npz").score(probe)) > 0.01  # tells them apart
    assert served_score(gw3.url, probe) == pytest.approx(r1, abs=1e-3)


def test_broken_artifact_is_served_by_the_rules_visibly(gateway_factory, fakes: tuple[Proc, Proc],  # type: ignore[no-untyped-def]
                                                       tmp_path: Path) -> None:
    weak, strong = fakes
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a router at all")
    gw = gateway_factory(config(weak.url, strong.url, broken, guards=False))
    r = ask(gw.url, "What is 2 + 2?")
    assert r.headers["x-turnout-engine"] == "small" and r.headers["x-turnout-strategy"] == "learned"
    reason = r.headers["x-turnout-reason"]
    assert "unusable" in reason and "routing by the chain's rules" in reason and "x-turnout-score" not in r.headers
    row = gw.ledger()[-1]
    assert "unusable" in row["reason"] and row["score"] is None
    assert "unusable" in gw.proc.output()  # logged at start-up
    assert not labels_of(gw.db, 1, timeout=1.0)  # no score, no shadow call


def test_serve_still_refuses_a_router_path_that_does_not_exist(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config("http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path / "typo", guards=False)))
    r = subprocess.run([sys.executable, "-m", "turnout", "serve", "--config", str(path), "--port", "0", "--db",
                        str(tmp_path / "db.sqlite")], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "routes.auto.router" in r.stderr and "no such file" in r.stderr


def test_shadow_config_is_validated() -> None:
    from turnout.config import ConfigError, TurnoutConfig

    base = config("http://127.0.0.1:9", "http://127.0.0.1:9", Path("r.npz"), guards=False)
    TurnoutConfig.model_validate(base)
    for bad in ({"share": 1.5}, {"judge": "vibes"}, {"judge": "llm:nobody"}, {"sampling": "random"}, {"extra": 1}):
        cfg = json.loads(json.dumps(base))
        cfg["routes"]["auto"]["shadow"].update(bad)
        with pytest.raises((ValueError, ConfigError)):
            TurnoutConfig.model_validate(cfg)
    rules = json.loads(json.dumps(base))
    rules["routes"]["auto"].update(strategy="rules")
    with pytest.raises(ValueError, match="belong to strategy 'learned'"):
        TurnoutConfig.model_validate(rules)
    judged = json.loads(json.dumps(base))
    judged["routes"]["auto"]["shadow"]["judge"] = "schema+exact+llm:big"
    TurnoutConfig.model_validate(judged)


def test_cascade_escalation_is_a_label(gateway_factory, fakes: tuple[Proc, Proc], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    weak, strong = fakes
    cfg = config(weak.url, strong.url, tmp_path / "unused.npz", guards=False, shadow=False)
    cfg["engines"]["small"]["model"] = "fake-small@logprob=-3.5"  # unsure of every token
    cfg["routes"] = {"auto": {"chain": ["small", "big"], "strategy": "cascade", "threshold": -1.0},
                     "kept": {"chain": ["big", "small"], "strategy": "cascade", "threshold": -1000.0}}
    gw = gateway_factory(cfg)
    r = ask(gw.url, "What is 2 + 2?")
    assert r.headers["x-turnout-engine"] == "big" and "cascade escalated" in r.headers["x-turnout-reason"]
    kept = httpx.post(gw.url + "/v1/chat/completions", timeout=60, json={
        "model": "kept", "messages": [{"role": "user", "content": "What is 3 + 3?"}]})
    assert kept.headers["x-turnout-engine"] == "big"  # kept its draft: no label
    rows = labels_of(gw.db, 2, timeout=2.0)  # a second label (route kept) would show within the wait
    assert [(x["request_id"], x["source"], x["judge"], x["weak_score"], x["strong_score"]) for x in rows] == [
        (r.headers["x-request-id"], "cascade", "cascade:confidence", 0.0, None)]
    assert rows[0]["prompt"] == "What is 2 + 2?"


def test_a_weak_engine_that_failed_is_a_cascade_failed_label(gateway_factory, fakes: tuple[Proc, Proc],  # type: ignore[no-untyped-def]
                                                             tmp_path: Path) -> None:
    """The label says why the cascade escalated from the decision's field, whichever engine drafted:
    here the route's first engine cannot call tools, so the second one drafts (and fails)."""
    weak, strong = fakes
    cfg = config(weak.url, strong.url, tmp_path / "unused.npz", guards=False, shadow=False)
    cfg["engines"]["plain"] = {**cfg["engines"]["small"], "supports_tools": False}
    cfg["engines"]["small"]["base_url"] = "http://127.0.0.1:9/v1"  # nothing listens: the draft fails
    cfg["routes"] = {"auto": {"chain": ["plain", "small", "big"], "strategy": "cascade", "threshold": -1.0}}
    gw = gateway_factory(cfg)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=60, json={
        "model": "auto", "messages": [{"role": "user", "content": "look it up"}], "max_tokens": 16,
        "tools": [tool], "tool_choice": "required"})
    assert r.status_code == 200, r.text
    assert (r.headers["x-turnout-engine"] == "big"
            and "cascade: small failed, escalated" in r.headers["x-turnout-reason"])
    assert "engines without tool calling skipped" in r.headers["x-turnout-reason"]
    rows = labels_of(gw.db, 1)
    assert [(x["request_id"], x["source"], x["judge"]) for x in rows] == [
        (r.headers["x-request-id"], "cascade", "cascade:failed")]


def test_shadow_labels_go_to_postgresql(gateway_factory, fakes: tuple[Proc, Proc], tmp_path: Path,  # type: ignore[no-untyped-def]
                                        pg_schema: str) -> None:
    from tests.conftest import PG_DSN
    from turnout.ledger.labels import PostgresLabels

    weak, strong = fakes
    artifact = router_on(synthetic(300, seed=8)).save(tmp_path / "r.npz")
    control(weak.url, "scenarios", {"replies": {"fake-small": ["#### 7"]}})
    control(strong.url, "scenarios", {"replies": {"fake-big": ["#### 8"]}})
    cfg = config(weak.url, strong.url, artifact, guards=False)
    cfg["storage"] = {"postgres_dsn": PG_DSN, "postgres_schema": pg_schema}
    gw = gateway_factory(cfg)
    r = ask(gw.url, "What is 3 + 4?")
    store = PostgresLabels(PG_DSN, pg_schema, migrate=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            rows = store.rows("auto")
        except Exception:  # noqa: BLE001 - the table appears with the first label
            rows = []
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(x["request_id"], x["source"], x["weak_score"], x["prompt"]) for x in rows] == [
        (r.headers["x-request-id"], "shadow", 0.0, "What is 3 + 4?")]  # 7 != 8
    assert not labels_of(gw.db, 1, timeout=0)  # none in the SQLite file
    drift = httpx.get(gw.url + "/v1/dashboard/stats", params={"hours": 1}, timeout=10).json()["drift"]["routes"]
    assert drift["auto"]["totals"] == {"escalation_rate": 0.0, "judged_local_quality": 0.0, "shadow_agreement": 0.0,
                                       "labels": 1, "shadow_labels": 1}  # the dashboard reads them there too


def test_no_learning_loop_without_learned_or_cascade_routes(tmp_path: Path) -> None:
    from turnout.config import TurnoutConfig
    from turnout.learning import LearningLoop
    from turnout.strategies import RulesStrategy

    cfg = TurnoutConfig.model_validate(config("http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path / "r.npz",
                                              guards=False, shadow=False))
    rules = {"auto": RulesStrategy("auto", cfg.routes["auto"])}
    assert LearningLoop.build(cfg, {}, rules, None) is None  # Gateway.chat then skips the step entirely


def test_llm_judge_asks_an_engine_over_a_socket(fakes: tuple[Proc, Proc]) -> None:
    import asyncio

    from turnout.engines.openai_http import OpenAIEngine, OpenAIEngineConfig
    from turnout.learning import build_judge

    _, strong = fakes
    control(strong.url, "scenarios", {"replies": {"fake-big": ["Both agree. VERDICT: SAME", "VERDICT: WORSE",
                                                               "no idea"]}})

    async def main() -> list[Any]:
        engine = OpenAIEngine("big", OpenAIEngineConfig.model_validate(
            {"dialect": "openai", "base_url": strong.url + "/v1", "model": "fake-big", "locality": "remote"}))
        await engine.start()
        judge = build_judge("exact+llm:big", {"big": engine})
        try:
            return [await judge.judge("q", "a cat", "a dog"), await judge.judge("q", "#### 2", "#### 3"),
                    await judge.judge("q", "x", "y"), await judge.judge("q", "y", "z")]
        finally:
            await engine.close()

    same, exact, worse, unreadable = asyncio.run(main())
    assert (same.weak_score, same.judge) == (1.0, "llm:big:rubric-v1")
    assert (exact.weak_score, exact.judge) == (0.0, "exact-answer")  # the exact judge could tell: no LLM call
    assert worse.weak_score == 0.0 and unreadable is None
    sent = control(strong.url, "requests")
    assert len(sent) == 3 and "a cat" in json.dumps(sent[0])
