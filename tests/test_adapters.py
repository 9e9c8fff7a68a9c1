"""The adapter gate, canary, promotion and rollback (issue 26 item 5), and `tune.trainer: command`.

Real parts: the registry on a SQLite file and on PostgreSQL, each step an audit-chain entry that
`turnout audit verify` checks; real GGUF LoRA adapters (tests/data/adapters, written by
scripts/make_adapter_fixture.py: `neutral` changes no answer, `noise` turns answers to nonsense) scored
by the embedded llama.cpp engine with and without them; a real gateway whose function gets a canary
variant from the registry, served by the OpenAI-wire stand-in (the canary's engine answers what the
function's check refuses: an injected regression), watched and rolled back by `turnout adapters watch`.
No torch: the trainer in the `trainer: command` test is a small script standing in for an external one.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import FAST_RESILIENCE, PG_DSN, Gateway, Upstream
from tests.runcli import run_cli
from turnout import adapter_manifest as am
from turnout.engines.smollm2 import smollm2_gguf
from turnout.ledger.adapters import RegistryError, open_adapters
from turnout.ledger.audit_store import open_audit_log
from turnout.weights import sha256_file

FIXTURES = Path(__file__).parent / "data" / "adapters"
pytestmark = pytest.mark.usefixtures("clean_upstreams")


# ---- an extraction function the base model does well enough ---------------------------------------------
def _pick_function(root: Path) -> Path:
    """fn:pick: copy the fruit named in the text (a JSON answer whose /fruit must occur in the input)."""
    folder = root / "fns" / "pick"
    folder.mkdir(parents=True)
    (folder / "function.yaml").write_text(yaml.safe_dump({
        "output_schema": "output.schema.json",
        "checks": [{"name": "copied", "field": "/fruit", "in_input": "text"}],
        "variants": {"v1": {"user": "user.j2", "route": "local", "params": {"max_tokens": 24}}}}))
    (folder / "input.schema.json").write_text(json.dumps(
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}))
    (folder / "output.schema.json").write_text(json.dumps(
        {"type": "object", "properties": {"fruit": {"type": "string", "maxLength": 20}}, "required": ["fruit"]}))
    (folder / "user.j2").write_text("Which fruit does this sentence name? Answer in JSON.\nSentence: {{ text }}")
    items = [("I ate an apple today.", "apple"), ("She bought a banana.", "banana"),
             ("The cherry was sweet.", "cherry")]
    (folder / "golden.jsonl").write_text("".join(
        json.dumps({"id": f"g{i}", "variables": {"text": t}, "json_fields": {"/fruit": f}}) + "\n"
        for i, (t, f) in enumerate(items)))
    return root / "fns"


def _adapter(folder: Path, kind: str) -> Path:
    """An adapter folder as `turnout tune` writes it, around a committed fixture GGUF."""
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{kind}.gguf", folder / am.GGUF)
    am.write_manifest(folder, {"format": am.FORMAT, "base": {"sha256": sha256_file(smollm2_gguf())},
                               "fixture": kind, "files": {am.GGUF: am.file_entry(folder / am.GGUF)}})
    return folder


def _write_config(tmp: Path, adapter: Path, fns: Path, **tune: Any) -> Path:
    cfg = {"engines": {"local": {"dialect": "llamacpp", "n_ctx": 512},
                       "local_tuned": {"dialect": "llamacpp", "n_ctx": 512, "adapter": str(adapter)}},
           "routes": {"auto": {"chain": ["local"]}}, "guards": {"enabled": False},
           "functions": {"path": str(fns)}, "storage": {"sqlite_path": str(tmp / "t.sqlite")},
           "tune": {"canary": {"engine": "local_tuned"}, **tune}}
    path = tmp / "turnout.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _audit(db: Path | None = None, dsn: str | None = None, schema: str = "public") -> list[dict[str, Any]]:
    with open_audit_log(db=db, dsn=dsn, schema=schema) as log:
        result = log.verify()
        assert result.ok, str(result)
        return [r.payload for r in log.tail(100_000) if r.payload.get("event") == "adapter"]


@pytest.mark.slow
def test_the_gate_refuses_an_adapter_worse_than_the_base(tmp_path: Path) -> None:
    fns = _pick_function(tmp_path)
    noise = _adapter(tmp_path / "noise", "noise")
    config = _write_config(tmp_path, noise, fns)
    out = run_cli("adapters", "eval", str(noise), "--config", str(config), "--function", "pick", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    base, tuned = report["evaluation"]["base"]["golden"], report["evaluation"]["adapter"]["golden"]
    assert base["n"] == tuned["n"] == 3
    assert tuned["rate"] < base["rate"], report  # the noise makes the model worse, measured by llama.cpp
    assert not report["gate"]["passed"] and any(r.startswith("golden:") for r in report["gate"]["reasons"])
    manifest = json.loads((noise / am.MANIFEST).read_text())
    assert manifest["evaluation"]["adapter"]["golden"]["rate"] == tuned["rate"]
    assert manifest["changelog"]["golden"]["vs_base"] == pytest.approx(tuned["rate"] - base["rate"], abs=1e-3)
    out = run_cli("adapters", "promote", str(noise), "--config", str(config))
    assert out.returncode == 3 and "refused by the gate: golden:" in out.stderr and "Traceback" not in out.stderr
    listed = json.loads(run_cli("adapters", "list", "--config", str(config), "--json").stdout)
    assert [r["status"] for r in listed] == ["refused"]
    events = _audit(tmp_path / "t.sqlite")
    assert [e["action"] for e in events] == ["registered", "refused"]
    assert events[-1]["gate"]["passed"] is False and events[-1]["adapter"] == listed[0]["id"]
    assert run_cli("audit", "verify", "--db", str(tmp_path / "t.sqlite")).returncode == 0


@pytest.mark.slow
def test_a_gated_adapter_goes_on_canary_then_promote_and_rollback_are_audited(tmp_path: Path) -> None:
    fns = _pick_function(tmp_path)
    neutral = _adapter(tmp_path / "neutral", "neutral")
    # min_gain 0: an adapter as good as the base passes (the neutral fixture changes no answer)
    config = _write_config(tmp_path, neutral, fns, gate={"min_gain": 0.0})
    out = run_cli("adapters", "promote", str(neutral), "--config", str(config))
    assert out.returncode == 2 and "holds no evaluation" in out.stderr  # evaluate first
    out = run_cli("adapters", "eval", str(neutral), "--config", str(config), "--function", "pick", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["evaluation"]["adapter"]["golden"] == report["evaluation"]["base"]["golden"]  # B = 0
    assert report["gate"]["passed"], report["gate"]
    # the canary engine must load this very folder
    (tmp_path / "other").mkdir()
    other = _write_config(tmp_path / "other", tmp_path / "elsewhere", fns, gate={"min_gain": 0.0})
    out = run_cli("adapters", "promote", str(neutral), "--config", str(other))
    assert out.returncode == 2 and "point it at the candidate" in out.stderr
    out = run_cli("adapters", "promote", str(neutral), "--config", str(config), "--share", "0.25", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["status"] == "canary" and row["share"] == 0.25 and row["engine"] == "local_tuned"
    assert row["from_variant"] == "v1" and row["variant"] == f"adapter-{row['id'][:8]}"
    out = run_cli("adapters", "promote", row["id"], "--config", str(config), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "promoted"
    out = run_cli("adapters", "promote", row["id"], "--config", str(config))
    assert out.returncode == 2 and "is promoted; promote takes a registered adapter" in out.stderr
    out = run_cli("adapters", "rollback", row["id"][:6], "--config", str(config), "--reason", "test", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "rolled_back"
    shown = run_cli("adapters", "show", row["id"], "--config", str(config))
    assert "rolled_back" in shown.stdout and "adapter golden" in shown.stdout
    events = _audit(tmp_path / "t.sqlite")
    assert [e["action"] for e in events] == ["registered", "canary", "promoted", "rolled_back"]
    assert events[1]["share"] == 0.25 and events[3]["reason"] == "test"
    assert run_cli("audit", "verify", "--db", str(tmp_path / "t.sqlite")).returncode == 0


# ---- the registry on both stores ---------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"db": tmp_path / "t.sqlite"}
    return {"dsn": PG_DSN, "schema": request.getfixturevalue("pg_schema")}


def test_the_registry_allows_only_its_transitions_and_audits_each(backend: dict[str, Any]) -> None:
    store = open_adapters(**backend)
    try:
        evaluation = {"function": "pick", "adapter": {"golden": {"rate": 1.0}}}
        for n in ("a1", "a2"):
            store.register(adapter_id=n, function="pick", path=f"/x/{n}", manifest_sha256=n * 8, base_sha256=None,
                           evaluation=evaluation, by="t")
        with pytest.raises(RegistryError, match="a1 is registered; promoted needs it canary"):
            store.transition("a1", "promoted", by="t")
        store.transition("a1", "canary", by="t", canary=("e", "adapter-a1", "v1", 0.1))
        with pytest.raises(RegistryError, match="already has adapter a1 on canary"):
            store.transition("a2", "canary", by="t", canary=("e", "adapter-a2", "v1", 0.1))
        assert store.transition("a1", "promoted", by="t").share == 1.0
        store.transition("a2", "canary", by="t", canary=("e", "adapter-a2", "v1", 0.1))
        store.transition("a2", "promoted", by="t")  # retires a1
        assert [(r.id, r.status) for r in store.list("pick")] == [("a1", "retired"), ("a2", "promoted")]
        assert store.previous("pick").id == "a2"  # type: ignore[union-attr]
        with pytest.raises(RegistryError, match="no adapter zz"):
            store.get("zz")
        with pytest.raises(RegistryError, match="registered for function pick, not other"):
            store.register(adapter_id="a1", function="other", path="/x", manifest_sha256="x", base_sha256=None,
                           evaluation=None, by="t")
    finally:
        store.close()
    with open_audit_log(db=backend.get("db"), dsn=backend.get("dsn"), schema=backend.get("schema", "public")) as log:
        result = log.verify()
        assert result.ok, str(result)
        actions = [(r.payload["adapter"], r.payload["action"]) for r in log.tail(20)
                   if r.payload.get("event") == "adapter"]
    assert actions == [("a1", "registered"), ("a2", "registered"), ("a1", "canary"), ("a1", "promoted"),
                       ("a2", "canary"), ("a1", "retired"), ("a2", "promoted")]


# ---- the canary in a running gateway ------------------------------------------------------------------------
def _greet_function(root: Path) -> Path:
    """fn:greet: the stand-in's "echo: ..." passes its check; "other: ..." (the @diverge model) does not."""
    folder = root / "fns" / "greet"
    folder.mkdir(parents=True)
    (folder / "function.yaml").write_text(yaml.safe_dump({
        "checks": [{"name": "echoed", "regex": "^echo: "}], "escalate_on": ["invalid_output"],
        "escalate_to": "good", "variants": {"v1": {"user": "user.j2", "route": "good"}}}))
    (folder / "input.schema.json").write_text(json.dumps(
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}))
    (folder / "user.j2").write_text("Say: {{ text }}")
    (folder / "golden.jsonl").write_text(json.dumps({"id": "g1", "variables": {"text": "world"}, "contains": "world"})
                                         + "\n")
    return root / "fns"


def _canary_gateway(gateway_factory: Any, upstream: Upstream, tmp: Path,
                    where: dict[str, Any] | None = None) -> tuple[Gateway, Path, dict[str, Any]]:
    """A gateway whose fn:greet may get a canary; ``where``: its store (default: its SQLite file)."""
    def engine(model: str) -> dict[str, Any]:
        return {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1", "model": model,
                "api_key_env": "TURNOUT_TEST_FRONTIER_KEY", "resilience": dict(FAST_RESILIENCE)}

    cfg: dict[str, Any] = {
        "engines": {"good": engine("fake-frontier"), "bad": engine("fake-frontier@diverge"),
                    "good2": engine("fake-frontier")},
        "routes": {"auto": {"chain": ["good"]}}, "guards": {"enabled": False},
        "functions": {"path": str(_greet_function(tmp))},
        "tune": {"canary": {"min_samples": 4, "reload_s": 0}}}
    if where and "dsn" in where:
        cfg["storage"] = {"postgres_dsn": where["dsn"], "postgres_schema": where["schema"]}
    gw = gateway_factory(cfg)
    if not where or "dsn" not in where:
        where = {"db": gw.db}
        cfg["storage"] = {"sqlite_path": str(gw.db)}  # the CLI's view of the gateway's database
    path = tmp / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return gw, path, where


def _call(gw: Gateway, episode: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "fn:greet", "messages": [{"role": "user", "content": json.dumps({"text": "hello"})}],
        "metadata": {"episode": episode}})


def _start_canary(where: dict[str, Any], adapter: str, engine: str, share: float) -> str:
    store = open_adapters(**where)
    try:
        store.register(adapter_id=adapter, function="greet", path="/adapters/" + adapter, manifest_sha256=adapter * 4,
                       base_sha256=None, evaluation={"function": "greet"}, by="test")
        row = store.transition(adapter, "canary", by="test", canary=(engine, f"adapter-{adapter}", "v1", share))
        return row.variant or ""
    finally:
        store.close()


def _variants(gw: Gateway, prefix: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        r = _call(gw, f"{prefix}-{i}")
        assert r.status_code == 200, r.text
        out.append(r.headers["x-turnout-variant"])
    return out


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_canary_that_regresses_is_rolled_back_by_the_watcher(store: str, gateway_factory: Any, upstream: Upstream,
                                                               tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pg = {"dsn": PG_DSN, "schema": request.getfixturevalue("pg_schema")} if store == "postgres" else None
    gw, config, where = _canary_gateway(gateway_factory, upstream, tmp_path, pg)
    assert _call(gw, "warm").status_code == 200  # the ledger exists
    variant = _start_canary(where, "badcafe0", "bad", 0.5)
    seen = _variants(gw, "before", 24)
    assert seen.count(variant) >= 4 and seen.count("v1") >= 4, seen  # both variants served, sticky per episode
    assert _call(gw, "before-0").headers["x-turnout-variant"] == seen[0]
    if store == "sqlite":
        rows = [r for r in gw.ledger() if r["variant"] == variant]
        outcomes = {(r["function_attempt"], r["function_outcome"].split(":")[0]) for r in rows}
        # the injected regression: the canary's answers fail the check, retried, then escalated to the good engine
        assert outcomes == {("first", "invalid"), ("retry", "invalid"), ("escalated", "valid")}
    out = run_cli("adapters", "watch", "--once", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    decision = json.loads(out.stdout)
    assert decision["action"] == "rolled_back" and "invalid rate 1.000 against 0.000" in decision["reasons"][0]
    assert decision["metrics"][variant]["escalation_rate"] == 1.0 and decision["metrics"]["v1"]["invalid"] == 0
    assert set(_variants(gw, "after", 8)) == {"v1"}  # reload_s 0: off traffic at once, old episodes too
    events = _audit(where.get("db"), where.get("dsn"), where.get("schema", "public"))
    assert [e["action"] for e in events] == ["registered", "canary", "rolled_back"]
    assert events[-1]["by"] == "watcher" and events[-1]["metrics"][variant]["first"] >= 4


def test_a_healthy_canary_is_promoted_to_all_traffic(gateway_factory: Any, upstream: Upstream, tmp_path: Path) -> None:
    gw, config, where = _canary_gateway(gateway_factory, upstream, tmp_path)
    assert _call(gw, "warm").status_code == 200
    variant = _start_canary(where, "g00dcafe", "good2", 0.5)
    out = run_cli("adapters", "watch", "--once", "--config", str(config), "--json")
    assert json.loads(out.stdout)["action"] == "wait"  # too few calls yet
    seen = _variants(gw, "e", 24)
    assert seen.count(variant) >= 4 and seen.count("v1") >= 4, seen
    out = run_cli("adapters", "watch", "--once", "--config", str(config), "--json")
    assert json.loads(out.stdout)["action"] == "promoted", out.stdout
    assert set(_variants(gw, "later", 6)) == {variant}
    assert [e["action"] for e in _audit(gw.db)] == ["registered", "canary", "promoted"]


def test_a_registry_naming_an_unknown_engine_is_ignored(gateway_factory: Any, upstream: Upstream,
                                                      tmp_path: Path) -> None:
    gw, _, where = _canary_gateway(gateway_factory, upstream, tmp_path)
    assert _call(gw, "warm").status_code == 200
    _start_canary(where, "0dd0dd00", "nosuchengine", 0.5)
    assert set(_variants(gw, "x", 6)) == {"v1"}
    assert "nosuchengine" in gw.proc.output() and "Traceback" not in gw.proc.output()


# ---- trainer: command ------------------------------------------------------------------------------------
TRAINER = """\
import json, pathlib, shutil, sys
dataset, out, config, fixture, mode = sys.argv[1:6]
settings = json.loads(pathlib.Path(config).read_text())
assert settings["dataset"] == dataset and settings["hyperparameters"]["rank"] == 4, settings
if mode == "fail":
    print("trainer: out of memory", file=sys.stderr)
    sys.exit(7)
if mode == "gguf":
    pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    shutil.copy(fixture, pathlib.Path(out) / "adapter.gguf")
    (pathlib.Path(out) / "peft").mkdir()
    (pathlib.Path(out) / "peft" / "adapter_config.json").write_text(json.dumps({"r": 4, "trainer": "stand-in"}))
"""


def _trainer_config(tmp: Path, fns: Path, mode: str) -> Path:
    script = tmp / "trainer.py"
    script.write_text(TRAINER)
    cfg = {"engines": {"local": {"dialect": "llamacpp", "n_ctx": 512}}, "routes": {"auto": {"chain": ["local"]}},
           "functions": {"path": str(fns)}, "storage": {"sqlite_path": str(tmp / "t.sqlite")},
           "tune": {"trainer": "command", "command": [sys.executable, str(script), "{dataset}", "{out}", "{config}",
                                                      str(FIXTURES / "neutral.gguf"), mode]}}
    path = tmp / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dataset(tmp: Path) -> Path:
    path = tmp / "d" / "train.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                    + "\n")
    (tmp / "d" / "validation.jsonl").write_text(json.dumps(
        {"messages": [{"role": "user", "content": "Say only: yes"}, {"role": "assistant", "content": "yes"}]}) + "\n")
    return path


@pytest.mark.slow
def test_an_external_trainer_command_feeds_the_same_manifest_evaluation_and_signature(tmp_path: Path) -> None:
    fns = _pick_function(tmp_path)
    dataset = _dataset(tmp_path)
    out = run_cli("tune", "--dataset", str(dataset), "--out", str(tmp_path / "a"), "--rank", "4", "--config",
                  str(_trainer_config(tmp_path, fns, "fail")))
    assert out.returncode == 1 and "the trainer exited with status 7" in out.stderr
    assert not (tmp_path / "a" / am.MANIFEST).exists()
    out = run_cli("tune", "--dataset", str(dataset), "--out", str(tmp_path / "b"), "--rank", "4", "--config",
                  str(_trainer_config(tmp_path, fns, "nothing")))
    assert out.returncode == 1 and "left neither adapter.gguf nor peft/" in out.stderr
    folder = tmp_path / "c"
    out = run_cli("tune", "--dataset", str(dataset), "--out", str(folder), "--rank", "4", "--config",
                  str(_trainer_config(tmp_path, fns, "gguf")), "--function", "pick")
    assert out.returncode == 0, out.stderr
    assert "turnout: evaluated: golden" in out.stdout and "validation" in out.stdout
    manifest = json.loads((folder / am.MANIFEST).read_text())
    assert manifest["trainer"]["kind"] == "command" and manifest["hyperparameters"]["rank"] == 4
    assert manifest["dataset"]["sha256"] == sha256_file(dataset) and manifest["base"]["sha256"] == sha256_file(
        smollm2_gguf())
    assert set(manifest["files"]) == {"adapter.gguf", "peft/adapter_config.json"}
    assert manifest["evaluation"]["adapter"]["validation"]["n"] == 1
    assert manifest["evaluation"]["adapter"]["golden"]["n"] == 3 and manifest["changelog"]["previous"] is None
    assert am.verify(folder, base_sha256=sha256_file(smollm2_gguf()))[0] == folder / am.GGUF


def test_trainer_command_config_is_checked() -> None:
    from turnout.config import ConfigError, parse_config

    base = {"engines": {"local": {"dialect": "llamacpp"}}}
    with pytest.raises(ConfigError, match="trainer: command needs the trainer's argv"):
        parse_config({**base, "tune": {"trainer": "command"}})
    with pytest.raises(ConfigError, match=r"\{model\} is not a placeholder"):
        parse_config({**base, "tune": {"trainer": "command", "command": ["t", "{model}"]}})
    with pytest.raises(ConfigError, match="tune.canary.engine: 'nope' is not a llamacpp engine"):
        parse_config({**base, "tune": {"canary": {"engine": "nope"}}})


def test_adapters_cli_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    out = run_cli("adapters", "rollback", "nope", "--db", str(db))
    assert out.returncode == 2 and "no adapter nope in the registry" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("adapters", "list", "--db", str(db), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []
    fns = _pick_function(tmp_path)
    adapter = _adapter(tmp_path / "a", "neutral")
    config = _write_config(tmp_path, adapter, fns)
    (adapter / am.SIGNATURE).write_bytes(b"x")
    out = run_cli("adapters", "eval", str(adapter), "--config", str(config), "--function", "pick")
    assert out.returncode == 2 and "is signed: an evaluation changes its manifest" in out.stderr
    (adapter / am.SIGNATURE).unlink()
    data = bytearray((adapter / am.GGUF).read_bytes())
    data[-1] ^= 1
    (adapter / am.GGUF).write_bytes(bytes(data))  # changed after it was written: refused before llama.cpp reads it
    for argv in (("eval", str(adapter), "--function", "pick"), ("promote", str(adapter))):
        out = run_cli("adapters", *argv, "--config", str(config))
        assert out.returncode == 2 and "changed after" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("adapters", "eval", str(adapter), "--config", str(config), "--function", "nope")
    assert out.returncode == 2 and "no function 'nope'" in out.stderr


# ---- the scheduled mode ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_schedule_trains_evaluates_and_gates_under_its_lock(gateway_factory: Any, upstream: Upstream,
                                                                tmp_path: Path) -> None:
    from turnout.ledger.capture import open_captures
    from turnout.tune.schedule import round_lock

    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    good = {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1", "model": "fake-frontier",
            "api_key_env": "TURNOUT_TEST_FRONTIER_KEY", "resilience": dict(FAST_RESILIENCE),
            "terms": {"train_on_outputs": "allowed"}}
    work = tmp_path / "work"
    local = {"dialect": "llamacpp", "n_ctx": 512, "terms": {"train_on_outputs": "allowed"}}
    cfg: dict[str, Any] = {
        "engines": {"good": good, "local": local},
        "routes": {"auto": {"chain": ["good"]}}, "guards": {"enabled": False},
        "functions": {"path": str(_greet_function(tmp_path))}, "capture": {"functions": {"greet": "on"}},
        "tune": {"trainer": "command", "every_s": 3600, "min_new_examples": 3, "function": "greet",
                 "tenants": ["anonymous"], "workdir": str(work), "tune_args": ["--rank", "4"],
                 "command": [sys.executable, str(script), "{dataset}", "{out}", "{config}",
                             str(FIXTURES / "neutral.gguf"), "gguf"]}}
    gw = gateway_factory(cfg)
    cfg["storage"] = {"sqlite_path": str(gw.db)}
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump(cfg))
    for i in range(3):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
            "model": "fn:greet", "messages": [{"role": "user", "content": json.dumps({"text": f"line {i}"})}],
            "metadata": {"episode": f"s{i}"}})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while len(open_captures(db=gw.db).rows()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # the capture writer commits after the request's ledger row
    with round_lock(work):  # another scheduler's round is running: this one skips
        out = run_cli("adapters", "schedule", "--once", "--config", str(config))
    assert out.returncode == 0 and "another round holds the schedule's lock" in out.stdout
    out = run_cli("adapters", "schedule", "--once", "--config", str(config), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    outcome = json.loads(out.stdout)
    # the neutral adapter scores exactly as the base: min_gain 0.01 refuses it
    assert outcome["result"] == "trained" and outcome["status"] == "refused" and outcome["examples"] == 3, outcome
    manifest = json.loads((Path(outcome["folder"]) / "adapter" / am.MANIFEST).read_text())
    assert manifest["trainer"]["kind"] == "command" and manifest["hyperparameters"]["rank"] == 4
    assert manifest["dataset"]["card"] is not None and manifest["evaluation"]["function"] == "greet"
    events = _audit(gw.db)
    assert [(e["action"], e["by"]) for e in events] == [("registered", "schedule"), ("refused", "schedule")]
    out = run_cli("adapters", "schedule", "--once", "--config", str(config))
    assert out.returncode == 0 and "0 new captured calls of fn:greet; 3 needed" in out.stdout


# ---- the gate's and the watcher's rules, on figures -----------------------------------------------------
def test_the_gate_needs_a_gain_on_every_slice_evaluated_and_no_check_regression() -> None:
    from turnout.config_tune import GateConfig
    from turnout.tune.gate import changelog, verdict

    gate = GateConfig.model_validate({"min_gain": 0.05, "max_check_regression": 0.1})

    def ev(golden: float | None, validation: float, checks: dict[str, float]) -> dict[str, Any]:
        part: dict[str, Any] = {"validation": {"rate": validation}}
        if golden is not None:
            part["golden"] = {"rate": golden, "checks": checks}
        return part

    good = {"base": ev(0.5, 0.4, {"schema": 1.0}), "adapter": ev(0.6, 0.5, {"schema": 0.95})}
    assert verdict(good, gate)["passed"]
    worse_validation = {"base": ev(0.5, 0.4, {}), "adapter": ev(0.9, 0.42, {})}
    assert verdict(worse_validation, gate)["reasons"] == [
        "validation: the adapter scores 0.420, the base 0.400; the gate needs at least 0.450 (tune.gate.min_gain 0.05)"]
    check_regressed = {"base": ev(0.5, 0.4, {"schema": 1.0}), "adapter": ev(0.9, 0.9, {"schema": 0.8})}
    assert verdict(check_regressed, gate)["reasons"][0].startswith("check schema: passes 0.800 with the adapter")
    assert not verdict({"base": {}, "adapter": {}}, gate)["passed"]  # nothing evaluated: never passes
    entry = changelog(good, ("prev0001", {"adapter": ev(0.55, 0.5, {})}))
    assert entry["golden"] == {"adapter": 0.6, "base": 0.5, "vs_base": 0.1, "previous": 0.55, "vs_previous": 0.05}
    assert entry["summary"].startswith("golden 0.600 (+0.100 vs base) (+0.050 vs prev0001)")


def test_the_watcher_rolls_back_on_escalations_or_judged_outcomes_and_waits_for_samples() -> None:
    from turnout.config_tune import CanaryConfig
    from turnout.tune.canary_watch import decide

    cfg = CanaryConfig.model_validate({"min_samples": 10})

    def m(first: int, invalid: float, escalation: float, judged: int = 0, sat: float | None = None) -> dict[str, Any]:
        return {"first": first, "invalid_rate": invalid, "escalation_rate": escalation, "judged": judged,
                "satisfaction": sat}

    assert decide({"c": m(9, 0, 0), "v1": m(50, 0, 0)}, "c", "v1", cfg)[0] == "wait"
    action, why = decide({"c": m(10, 0.0, 0.2), "v1": m(10, 0.0, 0.1)}, "c", "v1", cfg)
    assert action == "rolled_back" and why[0].startswith("escalation rate 0.200 against 0.100")
    action, why = decide({"c": m(10, 0, 0, 10, 0.5), "v1": m(10, 0, 0, 10, 0.8)}, "c", "v1", cfg)
    assert action == "rolled_back" and why[0].startswith("satisfaction 0.500 against 0.800")
    action, why = decide({"c": m(10, 0, 0, 3, 0.1), "v1": m(10, 0, 0, 10, 0.9)}, "c", "v1", cfg)
    assert action == "promoted" and "too few judged answers" in why[0]  # 3 judged: not compared yet
    assert decide({"c": m(10, 0.04, 0.0), "v1": m(10, 0.0, 0.0)}, "c", "v1", cfg)[0] == "promoted"  # within 0.05
