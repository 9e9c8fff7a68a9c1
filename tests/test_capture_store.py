"""The capture store on SQLite and on a real PostgreSQL (fresh schema): rows written by the ledger's
writer with their request's ledger row, later shadow answers, retention, erasure recorded in an
audit chain that still verifies; then the dataset rules over what was stored (sources, terms,
the episode/time split) and the configuration's checks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_DSN
from turnout.capture import Pending
from turnout.config import ConfigError, parse_config
from turnout.evals import chat_format
from turnout.evals.dataset_build import NoExamples, Selection, TermsRefused, build, classify, split
from turnout.guards.pseudonymize import Pseudonymizer
from turnout.ledger.audit_store import open_audit_log
from turnout.ledger.base import LedgerRow
from turnout.ledger.capture import CapturedAnswer, open_captures


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"db": tmp_path / "t.sqlite"}
    else:
        yield {"dsn": PG_DSN, "schema": request.getfixturevalue("pg_schema")}


def _ledger(where: dict[str, Any]) -> Any:
    if "db" in where:
        from turnout.ledger.sqlite import SQLiteLedger

        return SQLiteLedger(where["db"])
    from turnout.ledger.postgres import PostgresLedger

    return PostgresLedger(where["dsn"], schema=where["schema"])


def _pending(rid: str, tenant: str, ts: float, text: str, answer: str, engine: str = "local", *,
             escalated: int = 0, keep_s: float = 86400.0, episode: str | None = None,
             p: Pseudonymizer | None = None, draft: str | None = None) -> Pending:
    answers = [CapturedAnswer("local", "local", "draft", draft)] if draft else []
    answers.append(CapturedAnswer(engine, "remote" if engine != "local" else "local", "answer", answer))
    fields: dict[str, str | None] = {"function": "fx", "variant": "v1", "template_hash": "abc",
                                     "episode": episode, "function_attempt": "first", "function_outcome": "unchecked"}
    return Pending(request_id=rid, tenant=tenant, ts=ts, expires_ts=ts + keep_s, route="auto", scope="remote",
                   raw=[("user", text)], shown=[("user", text)], answers=answers, pseudonymizer=p,
                   function_fields=fields if episode else {}, engine=engine,
                   locality="remote" if engine != "local" else "local", escalated=escalated)


def _write(where: dict[str, Any], pendings: list[Pending]) -> None:
    """As the recorder does: each request's ledger row, then its capture queued (written by the
    ledger's capture writer; closing the ledger waits for what is queued)."""
    async def record(ledger: Any, p: Pending) -> None:
        await ledger.record(LedgerRow(ts=p.ts, request_id=p.request_id, tenant=p.tenant, alias="auto", status="ok",
                                      http_status=200, engine=p.engine))
        ledger.keep(p)

    async def go() -> None:
        ledger = _ledger(where)
        try:
            await asyncio.gather(*(record(ledger, p) for p in pendings))
        finally:
            await ledger.close()

    asyncio.run(go())


def _store(where: dict[str, Any]) -> Any:
    return open_captures(db=where.get("db"), dsn=where.get("dsn"), schema=where.get("schema", "public"))


def test_rows_answers_retention_and_erasure(backend: dict[str, Any]) -> None:
    now = time.time()
    p = Pseudonymizer()
    shown = p.pseudonymize("mail ada@example.org", [])  # no findings: the text as is
    hidden = "mail " + p.placeholder("EMAIL_ADDRESS", "ada@example.org")
    pend = [
        _pending("a1", "acme", now - 30, hidden, "sent to ada@example.org", "frontier", escalated=1, p=p,
                 draft="the weak draft", episode="e1"),
        _pending("a2", "acme", now - 20, "second question", "second answer"),
        _pending("b1", "beta", now - 10, "beta's question", "beta's answer"),
        _pending("old", "acme", now - 10, "expired", "expired", keep_s=1.0),
    ]
    assert shown == "mail ada@example.org"
    _write(backend, pend)
    store = _store(backend)
    try:
        rows = {r["request_id"]: r for r in store.rows(tenants=["acme"])}
        assert set(rows) == {"a1", "a2"}  # another tenant's and the expired row are not read
        assert [r["request_id"] for r in store.rows(since=now - 25)] == ["a2", "b1"]
        assert [r["request_id"] for r in store.rows(tenants=["acme"], until=now - 25, functions=["fx"])] == ["a1"]
        a1 = rows["a1"]
        assert [a["role"] for a in a1["answers"]] == ["draft", "answer"]
        # the answer restored for the client is stored concealed, with the request's placeholder
        assert a1["answers"][1]["text"] == f"sent to {hidden.split()[1]}" and "ada@" not in json.dumps(a1)
        assert (a1["escalated"], a1["function"], a1["episode"], a1["satisfaction"]) == (1, "fx", "e1", None)
        assert store.add_answer("a2", CapturedAnswer("frontier", "remote", "shadow", "strong", "exact", 1.0), 0.0)
        assert not store.add_answer("nope", CapturedAnswer("frontier", "remote", "shadow", "x"))
        a2 = next(r for r in store.rows(tenants=["acme"]) if r["request_id"] == "a2")
        assert [(a["role"], a["score"]) for a in a2["answers"]] == [("answer", 0.0), ("shadow", 1.0)]
        # the expired row was never stored (not only hidden from reads), whichever batch carried it
        assert "old" not in {r["request_id"] for r in store.rows(now=now - 3600)}
        assert store.purge_expired() == 0
        with pytest.raises(ValueError):
            store.forget()
        one = store.forget(request_id="a1", by="test")
        assert (one.captures, one.answers) == (1, 2)
        assert store.forget(tenant="beta").captures == 1
        assert [r["request_id"] for r in store.rows()] == ["a2"]
        assert store.purge_expired(now=now + 2 * 86400) == 1  # a2's day has passed by then
        assert store.rows(now=now) == []
    finally:
        store.close()
    with open_audit_log(db=backend.get("db"), dsn=backend.get("dsn"), schema=backend.get("schema", "public")) as log:
        result = log.verify()
        assert result.ok, str(result)
        assert result.rows == 4  # the ledger rows stay: they hold no request text
        erasures = [r.payload for r in log.tail(10) if r.payload.get("event") == "erasure"]
    assert [(e["scope"], e.get("request_id"), e["tenant"], e["captures"]) for e in erasures] == [
        ("request", "a1", None, 1), ("tenant", None, "beta", 1)]


def test_dataset_sources_terms_and_split(backend: dict[str, Any], tmp_path: Path) -> None:
    now = time.time()
    pend = [
        _pending("esc", "acme", now - 50, "hard question", "strong answer", "frontier", escalated=1,
                 draft="weak draft"),
        _pending("shadowed", "acme", now - 40, "shadowed question", "weak answer"),
        _pending("plain", "acme", now - 30, "plain question", "plain answer", episode="ep"),
        _pending("plain2", "acme", now - 5, "plain follow-up", "plain answer 2", episode="ep"),
        _pending("late", "acme", now - 20, "late question", "late answer"),
    ]
    _write(backend, pend)
    store = _store(backend)
    try:
        store.add_answer("shadowed", CapturedAnswer("claude", "remote", "shadow", "shadow answer", "exact", 1.0), 0.0)
        rows = store.rows(tenants=["acme"])
    finally:
        store.close()
    by_id = {r["request_id"]: r for r in rows}
    assert classify(by_id["esc"], ["distill"], 0.75)[0] == "distill"
    assert classify(by_id["esc"], ["rated", "checked"], 0.75) == "no_outcome"  # a teacher's answer is only distill
    src, answer = classify(by_id["shadowed"], ["distill", "judged"], 0.75)
    assert (src, answer["engine"], answer["text"]) == ("distill", "claude", "shadow answer")
    assert classify(by_id["plain"], ["distill", "judged", "checked", "rated"], 0.75) == "no_outcome"
    by_id["plain"]["satisfaction"] = 1.0
    by_id["plain2"]["satisfaction"] = 0.2
    by_id["late"]["answers"][0]["score"] = 1.0  # a judge scored the delivered answer as good
    assert classify(by_id["plain"], ["rated"], 0.75)[0] == "rated"
    assert classify(by_id["plain2"], ["rated"], 0.75) == "rated_bad"
    assert classify(by_id["late"], ["judged"], 0.75)[0] == "judged"
    by_id["plain2"]["satisfaction"] = 0.9

    cfg = parse_config({"engines": {
        "local": {"dialect": "llamacpp", "terms": {"train_on_outputs": "allowed"}},
        "frontier": {"dialect": "openai", "locality": "remote", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                     "terms": {"train_on_outputs": "allowed", "source": "our enterprise agreement"}},
        "claude": {"dialect": "anthropic", "locality": "remote", "base_url": "http://127.0.0.1:9", "model": "m",
                   "terms": {"train_on_outputs": "forbidden"}}}})
    from turnout.engines.smollm2 import smollm2_gguf

    fmt = chat_format.load(smollm2_gguf())
    sel = Selection(tenants=["acme"], validation=0.25)
    with pytest.raises(TermsRefused, match=r"claude \(1 example\(s\), terms: forbidden\)"):
        build(cfg, rows, sel, fmt, tmp_path / "refused", {"engine": "local"})
    assert not (tmp_path / "refused").exists()
    allowed = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={
        "distillation": cfg.policy.distillation.model_copy(update={"allow": ["claude"]})})})
    card = build(allowed, rows, sel, fmt, tmp_path / "ds", {"engine": "local"})
    assert card["counts"]["by_source"] == {"distill": 2, "judged": 1, "checked": 0, "rated": 2}
    assert card["teachers"]["claude"]["allowed_by"] == "policy.distillation.allow"
    assert card["teachers"]["frontier"]["terms_source"] == "our enterprise agreement"
    train = [json.loads(x) for x in (tmp_path / "ds" / "train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "ds" / "validation.jsonl").read_text().splitlines()]
    # 4 episodes, the newest quarter held out: episode "ep", whole (its first request is older than "late")
    assert [x["request_id"] for x in val] == ["plain", "plain2"]
    assert max(x["ts"] for x in train) < max(x["ts"] for x in val)
    assert {x["request_id"] for x in train} == {"esc", "shadowed", "late"}
    with pytest.raises(NoExamples):
        build(allowed, rows, Selection(tenants=["acme"], sources=["checked"]), fmt, tmp_path / "none",
              {"engine": "local"})


def test_split_keeps_episodes_whole_and_validation_newest() -> None:
    from turnout.evals.dataset_build import Example

    def ex(rid: str, ts: float, episode: str | None = None) -> Example:
        return Example({"request_id": rid, "ts": ts, "episode": episode, "function": "f"}, "rated", {"engine": "x"})

    items = [ex("a", 1, "e1"), ex("b", 2), ex("c", 3, "e1"), ex("d", 4), ex("e", 5)]
    train, val = split(items, 0.4)
    assert [e.row["request_id"] for e in val] == ["d", "e"]
    assert {e.row["request_id"] for e in train} == {"a", "b", "c"}
    assert split(items[:1], 0.5) == (items[:1], [])  # one episode: all of it trains


@pytest.mark.parametrize(("patch", "message"), [
    ({"routes": {"auto": {"chain": ["local"], "capture": "always"}}}, "routes.auto.capture"),
    ({"capture": {"functions": {"bad name!": "on"}}}, "is not a function name"),
    ({"capture": {"retention_days": 0}}, "capture.retention_days"),
    ({"policy": {"distillation": {"allow": ["nobody"]}}}, "policy.distillation.allow[0] names unknown engine"),
    ({"engines": {"local": {"dialect": "llamacpp", "terms": {"train_on_outputs": "maybe"}}}},
     "engines.local.terms.train_on_outputs"),
])
def test_config_errors_name_the_key(patch: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"engines": {"local": {"dialect": "llamacpp"}}, "routes": {"auto": {"chain": ["local"]}}}
    base.update(patch)
    with pytest.raises(ConfigError) as info:
        parse_config(base)
    assert message in str(info.value)


def test_yaml_on_and_off_read_as_modes() -> None:
    import yaml

    cfg = parse_config(yaml.safe_load("engines: {local: {dialect: llamacpp}}\n"
                                      "routes: {a: {chain: [local], capture: on}, b: {chain: [local], capture: off}}\n"
                                      "capture: {functions: {fx: local_ok}}\n"))
    assert (cfg.routes["a"].capture, cfg.routes["b"].capture, cfg.capture.functions) == ("on", "off",
                                                                                         {"fx": "local_ok"})


def test_serve_refuses_capture_of_an_unknown_function(tmp_path: Path) -> None:
    from turnout.server.app import load_functions

    base: dict[str, Any] = {"engines": {"local": {"dialect": "llamacpp"}}, "routes": {"auto": {"chain": ["local"]}},
                            "capture": {"functions": {"nosuch": "on"}}}
    with pytest.raises(ConfigError, match="functions.path is not set"):
        load_functions(parse_config(base))
    (tmp_path / "fns").mkdir()
    with pytest.raises(ConfigError, match=r"unknown function\(s\) nosuch"):
        load_functions(parse_config({**base, "functions": {"path": str(tmp_path / "fns")}}))


def test_config_check_refuses_capture_of_an_unknown_function(tmp_path: Path) -> None:
    import yaml

    from tests.runcli import run_cli

    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump({"engines": {"local": {"dialect": "llamacpp"}},
                                    "capture": {"functions": {"nosuch": "on"}}}))
    out = run_cli("config", "check", str(path))
    assert out.returncode == 2 and "capture.functions names nosuch" in out.stderr
    assert "Traceback" not in out.stderr and "ok" not in out.stdout


def test_dataset_and_data_commands_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    import yaml

    from tests.runcli import run_cli

    db = tmp_path / "t.sqlite"
    _write({"db": db}, [_pending("x1", "acme", time.time() - 5, "a question", "an answer")])
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text(yaml.safe_dump({"engines": {"local": {"dialect": "llamacpp"}},
                                   "storage": {"sqlite_path": str(db)}}))
    out = str(tmp_path / "out")
    cases = [
        (("--config", str(cfg), "--out", out), "--all-tenants"),                                  # whose data?
        (("--config", str(cfg), "--tenant", "a", "--all-tenants", "--out", out), "--all-tenants"),
        (("--config", str(cfg), "--tenant", "acme", "--sources", "gossip", "--out", out), "gossip"),
        (("--config", str(cfg), "--tenant", "acme", "--since", "yesterday", "--out", out), "ISO 8601"),
        (("--config", str(cfg), "--tenant", "acme", "--validation", "1.5", "--out", out), "--validation"),
        (("--config", str(cfg), "--tenant", "acme", "--base", "nope", "--out", out), "not a llamacpp engine"),
        (("--tenant", "acme", "--out", out), "--config"),
        (("--config", str(cfg), "--tenant", "acme", "--out", out), "no example among 1 captured"),  # no outcome
    ]
    for args, message in cases:
        r = run_cli("dataset", "build", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not Path(out).exists()
    purged = run_cli("data", "purge", "--config", str(cfg), "--json")
    assert purged.returncode == 0 and json.loads(purged.stdout) == {"purged": 0}


def test_a_function_entry_wins_over_its_route() -> None:
    """capture.functions: 'off' keeps a function out of a route that captures; 'on' captures a
    function whose route does not."""
    from turnout.call import Call
    from turnout.capture import Capturer
    from turnout.engines.base import ChatResult, Usage
    from turnout.ledger.tags import FunctionTag
    from turnout.protocol import ChatRequest
    from turnout.results import EngineInfo
    from turnout.routing.decision import Decision

    cfg = parse_config({"engines": {"local": {"dialect": "llamacpp"}},
                        "routes": {"on": {"chain": ["local"], "capture": "on"}, "off": {"chain": ["local"]}},
                        "functions": {"path": "fns"}, "capture": {"functions": {"quiet": "off", "loud": "on"}}})
    capturer = Capturer.build(cfg)
    assert capturer is not None

    def call(route: str, function: str | None) -> Call:
        c = Call(decision=Decision(alias=route, chain=["local"], rule="route", reason="r"))
        c.trail.begin(EngineInfo("local", "llamacpp", "m", "local")).ok = True
        if function is not None:
            c.function = FunctionTag(function, "v1", "h", attempt="first", input_sha256="0" * 64)
        return c

    req = ChatRequest.model_validate({"model": "on", "messages": [{"role": "user", "content": "hi"}]})
    answer = ChatResult("hello", "stop", Usage(1, 1))
    assert capturer.take(call("on", None), req, answer) is not None
    assert capturer.take(call("off", None), req, answer) is None
    assert capturer.take(call("on", "quiet"), req, answer) is None
    loud = capturer.take(call("off", "loud"), req, answer)
    assert loud is not None and loud.row().function == "loud" and loud.row().input_sha256 == "0" * 64
    assert capturer.take(call("on", None), req, ChatResult("", "stop", Usage(1, 0))) is None  # nothing to keep
    assert Capturer.build(parse_config({"engines": {"local": {"dialect": "llamacpp"}}})) is None  # off: no work
