"""The canary engine's adapter, loaded from the registry at run time (issue 26 item 5): no restart.

Real parts: one gateway for the module (started once, the model loaded once) whose canary engine
``local_tuned`` is a llamacpp engine without ``adapter:``; the adapter registry in its SQLite file, written by
the CLI (`turnout adapters promote|rollback|schedule`) or, for a row naming a folder the CLI would refuse, by
the registry's own API; real GGUF LoRA adapters (tests/data/adapters: ``noise`` turns SmolLM2's answers to
nonsense, ``neutral`` changes nothing); the function's own variant answered by the OpenAI-wire stand-in.
What is asserted is what the engine answers (the same prompt, temperature 0), the variant the gateway
assigns, the registry's rows and the audit chain. The evaluation in the manifests of the first tests is
written by the test (the gate's input; scoring through llama.cpp is tests/test_adapters.py's).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import FAST_RESILIENCE, PG_DSN, Gateway, Upstream, module_gateway, until
from tests.runcli import run_cli
from turnout import adapter_manifest as am
from turnout.engines.smollm2 import smollm2_gguf
from turnout.ledger.adapters import open_adapters
from turnout.ledger.audit_store import open_audit_log
from turnout.weights import sha256_file

FIXTURES = Path(__file__).parent / "data" / "adapters"
PROMPT = {"messages": [{"role": "user", "content": "Name three fruits."}], "max_tokens": 8, "temperature": 0}
TRAINER = """\
import pathlib, shutil, sys
out, fixture = sys.argv[1:3]
pathlib.Path(out).mkdir(parents=True, exist_ok=True)
shutil.copy(fixture, pathlib.Path(out) / "adapter.gguf")
"""


def _say_function(root: Path) -> Path:
    """fn:say: its variant v1 answers through the stand-in ("echo: ..." passes its check, which only records a
    verdict: no escalation); its canary (a copy of v1 through the canary engine) renders the very prompt of
    :data:`PROMPT`."""
    folder = root / "fns" / "say"
    folder.mkdir(parents=True)
    (folder / "function.yaml").write_text(yaml.safe_dump({
        "checks": [{"name": "echoed", "regex": "^echo: "}],  # no escalate_on: the verdict is only recorded
        "variants": {"v1": {"user": "user.j2", "route": "good", "params": {"max_tokens": 8, "temperature": 0}}}}))
    (folder / "input.schema.json").write_text(json.dumps(
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}))
    (folder / "user.j2").write_text("Name three {{ text }}.")
    (folder / "golden.jsonl").write_text(json.dumps(
        {"id": "g1", "variables": {"text": "vegetables"}, "contains": "vegetables"}) + "\n")
    return root / "fns"


def _adapter(folder: Path, kind: str, evaluation: bool = True) -> Path:
    """An adapter folder as `turnout tune` + `turnout adapters eval` write it, around a fixture GGUF."""
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{kind}.gguf", folder / am.GGUF)
    manifest: dict[str, Any] = {"format": am.FORMAT, "base": {"sha256": sha256_file(smollm2_gguf())},
                                "fixture": kind, "files": {am.GGUF: am.file_entry(folder / am.GGUF)}}
    if evaluation:
        manifest["evaluation"] = {"function": "say", "variant": "v1", "base": {"golden": {"rate": 0.0}},
                                  "adapter": {"golden": {"rate": 1.0}}}
    am.write_manifest(folder, manifest)
    return folder


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


class Hot:
    def __init__(self, gw: Gateway, config: Path, root: Path) -> None:
        self.gw, self.config, self.root = gw, config, root

    def ask(self, model: str = "tuned") -> httpx.Response:
        return httpx.post(self.gw.url + "/v1/chat/completions", timeout=60, json={"model": model, **PROMPT})

    def answer(self) -> str:
        r = self.ask()
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    def say(self, episode: str, text: str = "fruits") -> httpx.Response:
        r = httpx.post(self.gw.url + "/v1/chat/completions", timeout=60, json={
            "model": "fn:say", "messages": [{"role": "user", "content": json.dumps({"text": text})}],
            "metadata": {"episode": episode}})
        assert r.status_code == 200, r.text
        return r

    def detail(self) -> str:
        return str(httpx.get(self.gw.url + "/readyz", timeout=10).json()["engines"]["local_tuned"]["detail"])

    def cli(self, *argv: str) -> Any:
        return run_cli("adapters", *argv, "--config", str(self.config))

    def events(self) -> list[dict[str, Any]]:
        with open_audit_log(db=self.gw.db) as log:
            result = log.verify()
            assert result.ok, str(result)
            return [r.payload for r in log.tail(100_000) if r.payload.get("event") == "adapter"]


@pytest.fixture(scope="module")
def hot(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Hot]:
    root = tmp_path_factory.mktemp("hot")
    broken = _adapter(root / "broken", "neutral")
    _flip_last_byte(broken / am.GGUF)  # changed after its manifest was written: the engine must not start
    trainer = root / "trainer.py"
    trainer.write_text(TRAINER)
    llama = {"dialect": "llamacpp", "n_ctx": 512, "n_threads": 1, "terms": {"train_on_outputs": "allowed"}}
    cfg: dict[str, Any] = {
        "engines": {"good": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                             "model": "fake-frontier", "api_key_env": "TURNOUT_TEST_FRONTIER_KEY",
                             "resilience": dict(FAST_RESILIENCE), "terms": {"train_on_outputs": "allowed"}},
                    "local_tuned": llama, "local_broken": {**llama, "adapter": str(broken)}},
        "routes": {"auto": {"chain": ["good"]}, "tuned": {"chain": ["local_tuned"]},
                   "broken": {"chain": ["local_broken"]}},
        "guards": {"enabled": False}, "functions": {"path": str(_say_function(root))},
        "capture": {"functions": {"say": "on"}},
        "tune": {"gate": {"min_gain": 0.0}, "canary": {"engine": "local_tuned", "reload_s": 0, "share": 0.5},
                 "trainer": "command",
                 "command": [sys.executable, str(trainer), "{out}", str(FIXTURES / "neutral.gguf")],
                 "every_s": 3600, "min_new_examples": 3, "function": "say", "tenants": ["anonymous"],
                 "workdir": str(root / "work")}}
    gen = module_gateway(tmp_path_factory, cfg)
    gw = next(gen)
    cfg["storage"] = {"sqlite_path": str(gw.db)}  # the CLI's view of the gateway's database
    config = root / "cli.yaml"
    config.write_text(yaml.safe_dump(cfg))
    yield Hot(gw, config, root)
    gen.close()


def test_an_adapter_put_on_canary_by_the_cli_is_loaded_and_rolled_back_without_restart(hot: Hot) -> None:
    base = hot.answer()
    assert "with adapter" not in hot.detail()
    noise = _adapter(hot.root / "noise", "noise")
    out = hot.cli("promote", str(noise), "--json")  # no engines.local_tuned.adapter: the gateway loads it
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["status"] == "canary" and row["engine"] == "local_tuned" and row["share"] == 0.5
    tuned = until(lambda: (a := hot.answer()) != base and a, "the canary engine answering with the adapter")
    assert f"with adapter {row['id']}" in hot.detail()
    assert hot.answer() == tuned  # the adapter's answer, every time (temperature 0)
    seen = {}
    for i in range(12):
        r = hot.say(f"e{i}")
        seen.setdefault(r.headers["x-turnout-variant"], r.json()["choices"][0]["message"]["content"])
    assert set(seen) == {"v1", row["variant"]}, seen
    assert seen[row["variant"]] == tuned and seen["v1"].startswith("echo: ")  # the canary: the same prompt, adapted
    out = hot.cli("rollback", row["id"], "--reason", "test", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "rolled_back", out.stderr
    until(lambda: hot.answer() == base, "the canary engine answering with its base weights again")
    assert "with adapter" not in hot.detail()
    assert {hot.say(f"after{i}").headers["x-turnout-variant"] for i in range(6)} == {"v1"}
    assert [e["action"] for e in hot.events() if e["adapter"] == row["id"]] == ["registered", "canary", "rolled_back"]
    assert "Traceback" not in hot.gw.proc.output()


def test_an_adapter_changed_after_its_manifest_is_refused_at_hot_load_and_rolled_back(hot: Hot) -> None:
    base = hot.answer()
    folder = _adapter(hot.root / "tampered", "noise")
    _flip_last_byte(folder / am.GGUF)
    store = open_adapters(db=hot.gw.db)  # a row the CLI would refuse: as if the files changed after promote
    try:
        store.register(adapter_id="7a3bedf00d000001", function="say", path=str(folder), manifest_sha256="x" * 64,
                       base_sha256=None, evaluation={"function": "say"}, by="test")
        store.transition("7a3bedf00d000001", "canary", by="test", canary=("local_tuned", "adapter-7a3bedf0", "v1", 0.5))
        row = until(lambda: (r := store.get("7a3bedf00d000001")).status == "rolled_back" and r, "the gateway's refusal")
    finally:
        store.close()
    assert row.reason.startswith("engine local_tuned refused to load it: ") and "changed after" in row.reason
    assert hot.answer() == base  # never served: the base answers
    assert "refused: " in hot.detail() and "with adapter" not in hot.detail()
    assert {hot.say(f"t{i}").headers["x-turnout-variant"] for i in range(6)} == {"v1"}
    last = [e for e in hot.events() if e["adapter"] == "7a3bedf00d000001"][-1]
    assert last["action"] == "rolled_back" and last["by"] == "gateway" and "changed after" in last["reason"]
    out = hot.cli("show", "7a3bedf00d000001")
    assert "rolled_back" in out.stdout and "refused to load it" in out.stdout
    assert "refused adapter 7a3bedf00d000001" in hot.gw.proc.output() and "Traceback" not in hot.gw.proc.output()


def test_a_configured_adapter_that_fails_its_checks_says_why(hot: Hot) -> None:
    r = hot.ask("broken")
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "local_broken: adapter_refused (its adapter was refused: a file changed after it was written)" in message
    row = until(lambda: [x for x in hot.gw.ledger() if x["alias"] == "broken"], "the ledger row")[-1]
    hops = json.loads(row["hops"])
    assert hops[0]["code"] == "adapter_refused" and "a file changed after it was written" in hops[0]["error"]
    assert "adapter_refused (its adapter was refused: a file changed after" in row["error"]


def test_promote_still_takes_a_canary_engine_whose_adapter_is_configured(tmp_path: Path) -> None:
    from turnout.config import ConfigError, parse_config

    folder = _adapter(tmp_path / "a", "neutral")
    fns = _say_function(tmp_path)
    base = {"engines": {"good": {"dialect": "llamacpp"}, "t": {"dialect": "llamacpp", "adapter": str(folder)}},
            "functions": {"path": str(fns)}, "storage": {"sqlite_path": str(tmp_path / "t.sqlite")}}
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump({**base, "tune": {"canary": {"engine": "t"}}}))
    other = _adapter(tmp_path / "b", "noise")
    out = run_cli("adapters", "promote", str(other), "--config", str(config))
    assert out.returncode == 2 and "or remove engines.t.adapter" in out.stderr
    out = run_cli("adapters", "promote", str(folder), "--config", str(config), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "canary", out.stderr
    with pytest.raises(ConfigError, match="tune.canary.auto: the scheduler starts canaries only on"):
        parse_config({**base, "tune": {"canary": {"engine": "t", "auto": True}}})
    with pytest.raises(ConfigError, match="tune.canary.auto"):
        parse_config({**base, "tune": {"canary": {"auto": True}}})


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """One embedded engine in this process for the tests below (its first answer is the costly one)."""
    from turnout.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig

    started = LlamaCppEngine("t", LlamaCppEngineConfig.model_validate(
        {"dialect": "llamacpp", "n_ctx": 512, "n_threads": 1}))
    asyncio.run(started.start())
    yield started
    asyncio.run(started.close())


def _chat(engine: Any) -> str:
    from turnout.protocol import ChatRequest

    return str(asyncio.run(engine.chat(ChatRequest.model_validate({"model": "x", **PROMPT}))).content)


def test_the_engine_refuses_an_unsigned_adapter_when_it_trusts_keys_and_keeps_answering(engine: Any,
                                                                                        tmp_path: Path) -> None:
    from turnout.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig

    folder = _adapter(tmp_path / "u", "noise")
    key = tmp_path / "trusted.pub.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")  # never read: no signature to check
    before = _chat(engine)
    plain = engine.cfg
    engine.cfg = plain.model_copy(update={"adapter_public_keys": [str(key)]})  # as if configured with the key
    try:
        with pytest.raises(am.AdapterRefused, match="unsigned") as refused:
            asyncio.run(engine.use_adapter("u1", folder))
    finally:
        engine.cfg = plain
    assert refused.value.kind == "unsigned" and engine.adapter is None
    assert _chat(engine) == before
    ok, detail = asyncio.run(engine.ready())
    assert ok and "adapter u1 refused: " in detail and "with adapter" not in detail
    static = LlamaCppEngine("s", LlamaCppEngineConfig.model_validate({"dialect": "llamacpp", "adapter": str(folder)}))
    with pytest.raises(ValueError, match="has a configured adapter"):
        asyncio.run(static.use_adapter("x", folder))


def test_the_sync_loads_a_live_adapter_before_serving_and_keeps_it_while_the_registry_is_unreadable(
        engine: Any, tmp_path: Path) -> None:
    from turnout.functions.hot_adapters import HotAdapters
    from turnout.ledger.stats import sqlite_query

    db = tmp_path / "t.sqlite"
    folder = _adapter(tmp_path / "n", "noise")
    store = open_adapters(db=db)
    store.register(adapter_id="n1", function="say", path=str(folder), manifest_sha256="n" * 64, base_sha256=None,
                   evaluation=None, by="test")
    store.transition("n1", "canary", by="test", canary=("t", "adapter-n1", "v1", 0.5))
    store.transition("n1", "promoted", by="test")  # e.g. the gateway restarts with an adapter promoted
    readable = [True]

    def query(sql: str, params: Any) -> Any:
        if not readable[0]:
            raise OSError("disk I/O error")
        return sqlite_query(db)(sql, params)

    base = _chat(engine)
    hot = HotAdapters(query, {"t": engine}, 60.0)

    async def begin() -> None:
        await hot.start()  # the first look happens before it returns: before the gateway serves
        assert hot.serving("t") == "n1" and hot.generation == 1
        await hot.close()

    try:
        asyncio.run(begin())
        tuned = _chat(engine)
        assert tuned != base
        readable[0] = False
        asyncio.run(hot.sync())  # a database hiccup is not a rollback
        assert hot.serving("t") == "n1" and _chat(engine) == tuned
        readable[0] = True
        store.transition("n1", "rolled_back", by="test")
        asyncio.run(hot.sync())
        assert hot.serving("t") is None and hot.generation == 2
        assert _chat(engine) == base
    finally:
        store.close()


def test_on_postgres_a_refused_adapter_is_rolled_back_by_the_gateway_and_a_good_one_served(
        engine: Any, tmp_path: Path, pg_schema: str) -> None:
    from turnout.config import parse_config
    from turnout.functions.hot_adapters import HotAdapters
    from turnout.functions.stats import ledger_query

    cfg = parse_config({"engines": {"t": {"dialect": "llamacpp"}}, "tune": {"canary": {"engine": "t"}},
                        "storage": {"postgres_dsn": PG_DSN, "postgres_schema": pg_schema}})
    hot = HotAdapters.build(cfg, {"t": engine}, ledger_query(cfg))
    assert hot is not None and hot.engines == {"t"}
    good, bad = _adapter(tmp_path / "good", "noise"), _adapter(tmp_path / "bad", "noise")
    _flip_last_byte(bad / am.GGUF)
    store = open_adapters(dsn=PG_DSN, schema=pg_schema)
    try:
        for n, folder in (("bad1", bad), ("good1", good)):
            store.register(adapter_id=n, function="say", path=str(folder), manifest_sha256=n * 8, base_sha256=None,
                           evaluation=None, by="test")
        store.transition("bad1", "canary", by="test", canary=("t", "adapter-bad1", "v1", 0.5))
        asyncio.run(hot.sync())
        assert hot.serving("t") is None and store.get("bad1").status == "rolled_back"
        assert "refused to load it" in (store.get("bad1").reason or "")
        store.transition("good1", "canary", by="test", canary=("t", "adapter-good1", "v1", 0.5))
        asyncio.run(hot.sync())
        assert hot.serving("t") == "good1"
        store.transition("good1", "rolled_back", by="test")
        asyncio.run(hot.sync())
        assert hot.serving("t") is None
    finally:
        store.close()
    with open_audit_log(dsn=PG_DSN, schema=pg_schema) as log:
        assert log.verify().ok
        steps = [(r.payload["adapter"], r.payload["action"], r.payload["by"]) for r in log.tail(50)
                 if r.payload.get("event") == "adapter" and r.payload["action"] != "registered"]
    assert steps == [("bad1", "canary", "test"), ("bad1", "rolled_back", "gateway"), ("good1", "canary", "test"),
                     ("good1", "rolled_back", "test")]


@pytest.mark.slow
def test_the_schedule_starts_the_canary_itself_with_canary_auto(hot: Hot) -> None:
    for i, text in enumerate(("apples", "pears", "plums", "figs")):
        hot.say(f"s{i}", text)
    time.sleep(0.5)  # the capture writer commits after the request's ledger row
    cfg = yaml.safe_load(hot.config.read_text())
    cfg["tune"]["canary"]["auto"] = True
    config = hot.root / "auto.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = run_cli("adapters", "schedule", "--once", "--config", str(config), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    outcome, _ = json.JSONDecoder().raw_decode(out.stdout)  # then the watcher's decisions
    # the neutral adapter scores as the base: min_gain 0 lets it through, and auto starts its canary
    assert outcome["result"] == "trained" and outcome["status"] == "canary", outcome
    assert "no restart" in outcome["reason"]
    until(lambda: f"with adapter {outcome['adapter']}" in hot.detail(), "the gateway loading the scheduled adapter")
    events = [e for e in hot.events() if e["adapter"] == outcome["adapter"]]
    assert [(e["action"], e["by"]) for e in events] == [("registered", "schedule"), ("canary", "schedule")]
    assert hot.cli("rollback", outcome["adapter"]).returncode == 0
    until(lambda: "with adapter" not in hot.detail(), "the adapter taken off")
