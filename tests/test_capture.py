"""Capture through the running gateway (issue 26): what is kept for datasets, in what form, and
its erasure; then `turnout dataset build` over what was kept. One gateway with the default guards
(the PII pseudonymizer is what capture stores), a real loopback frontier, the embedded model."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import GUARDS_ON, Gateway, Upstream, hybrid_config, module_gateway
from tests.runcli import run_cli

pytestmark = pytest.mark.usefixtures("clean_upstreams")

NAME, EMAIL = "Margaret Thornbury", "m.thornbury@example.org"
PII_MSG = f"Please write a short note to {NAME}; her email is {EMAIL}."
SECRET = "AKIA" + "Q3VJ7ZK2MWX4RT5N"  # not a real key: the secrets guard's AWS pattern


def _function(root: Path) -> Path:
    """fn:greet: its answer is checked (the fake frontier's 'echo: ...' passes), one golden item."""
    folder = root / "fns" / "greet"
    folder.mkdir(parents=True)
    (folder / "function.yaml").write_text(yaml.safe_dump({
        "checks": [{"regex": "^echo: Write one line"}], "variants": {"v1": {"user": "user.j2", "route": "auto"}}}))
    (folder / "input.schema.json").write_text(json.dumps(
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}))
    (folder / "user.j2").write_text("Write one line about: {{ text }}")
    (folder / "golden.jsonl").write_text(json.dumps({"id": "g1", "variables": {"text": "the golden input"},
                                                     "contains": "golden"}) + "\n")
    return root / "fns"


def _config(upstream: Upstream, anthropic: Upstream, fns: Path, **extra: Any) -> dict[str, Any]:
    cfg = hybrid_config(upstream.url, anthropic.url, guards=GUARDS_ON)
    cfg["routes"]["auto"]["capture"] = "on"
    cfg["routes"]["lenient"] = {"chain": ["frontier", "local"], "capture": "local_ok"}
    # answer_logprob is never above 0: every draft is escalated
    cfg["routes"]["cascading"] = {"chain": ["local", "frontier"], "strategy": "cascade", "threshold": 0.0,
                                  "capture": "on"}
    cfg["functions"] = {"path": str(fns)}
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, anthropic_upstream: Upstream) -> Iterator[Gateway]:
    fns = _function(tmp_path_factory.mktemp("capture-fns"))
    cfg = _config(upstream, anthropic_upstream, fns)
    for g in module_gateway(tmp_path_factory, cfg):
        g.config = cfg  # type: ignore[attr-defined]  # what `turnout dataset build` reads, with this ledger
        yield g


def captured(gw: Gateway, request_id: str | None = None) -> list[dict[str, Any]]:
    """The captured rows (of one request), once written: captures are written off the request path,
    after the response, so a request's row is waited for (10 s at most)."""
    import time

    deadline = time.monotonic() + 10
    while True:
        rows = _captured(gw, request_id)
        if rows or request_id is None or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def not_captured(gw: Gateway, request_id: str) -> bool:
    """True when ``request_id`` has no captured row, once the queue is past it: one capture writer
    thread writes in order, so a later request's row in the table means earlier ones were written."""
    marker = chat(gw, "a marker request, captured after the one checked").headers["x-request-id"]
    assert captured(gw, marker), "the marker request was not captured"
    return _captured(gw, request_id) == []


def _captured(gw: Gateway, request_id: str | None) -> list[dict[str, Any]]:
    conn = sqlite3.connect(gw.db)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM captures ORDER BY ts")]
        for r in rows:
            r["answers"] = [dict(a) for a in conn.execute(
                "SELECT * FROM capture_answers WHERE request_id = ? ORDER BY id", (r["request_id"],))]
    finally:
        conn.close()
    return [r for r in rows if request_id is None or r["request_id"] == request_id]


def chat(gw: Gateway, content: str, model: str = "auto", max_tokens: int = 64, **kw: Any) -> Any:
    """64 tokens: the fake frontier's whole echo; the embedded model's answers are asked for 8."""
    return gw.openai().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, **kw)


def test_off_by_default_and_per_route(gw: Gateway) -> None:
    raw = chat(gw, "hello from a route that does not capture", model="remote-only")
    assert raw.headers["x-turnout-engine"] == "frontier"
    assert not_captured(gw, raw.headers["x-request-id"])
    on = chat(gw, "hello from a route that captures")
    rows = captured(gw, on.headers["x-request-id"])
    assert len(rows) == 1 and rows[0]["route"] == "auto" and rows[0]["scope"] == "remote"
    assert [a["role"] for a in rows[0]["answers"]] == ["answer"]
    assert rows[0]["answers"][0]["text"] == "echo: hello from a route that captures"
    assert rows[0]["expires_ts"] == pytest.approx(rows[0]["ts"] + 30 * 86400)


def test_pii_is_stored_pseudonymized_never_raw(gw: Gateway) -> None:
    raw = chat(gw, PII_MSG)
    assert raw.parse().choices[0].message.content == f"echo: {PII_MSG}"  # the client has its values back
    [row] = captured(gw, raw.headers["x-request-id"])
    stored = row["messages"] + json.dumps(row["answers"])
    for part in ("Margaret", "Thornbury", EMAIL):
        assert part not in stored, part
    assert "<EMAIL_ADDRESS_" in row["messages"] and "<PERSON_" in row["messages"]
    # the answer (restored for the client) is stored with the same placeholders as the request
    placeholder = next(w.strip(".;") for w in json.loads(row["messages"])[0]["content"].split() if "<EMAIL" in w)
    assert placeholder in row["answers"][0]["text"]


def test_streamed_answers_are_captured_whole(gw: Gateway) -> None:
    with gw.openai().chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": "stream this answer please"}], stream=True,
            max_tokens=64) as resp:
        rid = resp.headers["x-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "echo: stream this answer please"
    [row] = captured(gw, rid)
    assert row["answers"][0]["text"] == text


def test_a_cascade_keeps_the_escalated_draft_beside_the_strong_answer(gw: Gateway) -> None:
    raw = chat(gw, "What is the capital of France?", model="cascading", max_tokens=8)
    assert raw.headers["x-turnout-engine"] == "frontier"
    [row] = captured(gw, raw.headers["x-request-id"])
    assert row["escalated"] == 1
    roles = [(a["role"], a["engine"], a["locality"]) for a in row["answers"]]
    assert roles == [("draft", "local", "local"), ("answer", "frontier", "remote")]
    assert row["answers"][0]["text"] and row["answers"][1]["text"].startswith("echo: What is the capital")


def test_sensitive_requests_are_never_captured(gw: Gateway) -> None:
    raw = chat(gw, "a sensitive question", model="lenient", max_tokens=8,
               extra_headers={"x-turnout-sensitivity": "sensitive"})
    assert raw.headers["x-turnout-engine"] == "local"
    assert not_captured(gw, raw.headers["x-request-id"])


def test_kept_local_only_with_local_ok_and_scrubbed(gw: Gateway, upstream: Upstream) -> None:
    msg = f"Why does aws reject my key {SECRET}?"
    on = chat(gw, msg, max_tokens=8)  # capture: on, the guards keep it local -> not captured
    assert on.headers["x-turnout-engine"] == "local"
    assert not_captured(gw, on.headers["x-request-id"])
    ok = chat(gw, msg, model="lenient", max_tokens=8)  # capture: local_ok
    assert ok.headers["x-turnout-engine"] == "local"
    [row] = captured(gw, ok.headers["x-request-id"])
    assert row["scope"] == "local_ok" and row["locality"] == "local"
    assert SECRET not in row["messages"] and "Why does aws reject my key [" in row["messages"]
    assert SECRET not in json.dumps(upstream.requests())  # only the marker requests went out


def test_function_calls_carry_function_variant_template_and_verdict(gw: Gateway) -> None:
    raw = chat(gw, json.dumps({"text": "the sea"}), model="fn:greet")
    [row] = captured(gw, raw.headers["x-request-id"])
    assert (row["function"], row["variant"], row["function_outcome"], row["attempt"]) == ("greet", "v1", "valid",
                                                                                           "first")
    assert row["template_hash"] == raw.headers["x-turnout-template-hash"]
    assert json.loads(row["messages"]) == [{"role": "user", "content": "Write one line about: the sea"}]


def _build_config(gw: Gateway, tmp: Path, **policy: Any) -> Path:
    cfg = json.loads(json.dumps(gw.config))  # type: ignore[attr-defined]
    cfg["storage"] = {"sqlite_path": str(gw.db)}
    cfg.setdefault("policy", {}).update(policy)
    path = tmp / f"build-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dataset_build_refuses_unknown_terms_then_excludes_golden(gw: Gateway, tmp_path: Path) -> None:
    golden = chat(gw, json.dumps({"text": "the golden input"}), model="fn:greet")
    other = chat(gw, json.dumps({"text": "the hills"}), model="fn:greet")
    again = chat(gw, json.dumps({"text": "the hills"}), model="fn:greet")  # the same input: a duplicate
    ids = {r.headers["x-request-id"] for r in (golden, other, again)}
    assert all(captured(gw, i) for i in ids)
    cfg = _build_config(gw, tmp_path)
    out = tmp_path / "ds"
    refused = run_cli("dataset", "build", "--config", str(cfg), "--tenant", "anonymous", "--function", "greet",
                      "--out", str(out))
    assert refused.returncode == 3, refused.stderr
    assert "frontier" in refused.stderr and "terms: unknown" in refused.stderr and "Traceback" not in refused.stderr
    assert not out.exists()  # nothing written
    allowed = _build_config(gw, tmp_path, distillation={"allow": ["frontier"]})
    done = run_cli("dataset", "build", "--config", str(allowed), "--tenant", "anonymous", "--function", "greet",
                   "--validation", "0", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)
    lines = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    texts = json.dumps(lines)
    assert "the golden input" not in texts
    assert card["counts"]["excluded"]["golden"] >= 1 and card["counts"]["excluded"]["duplicate"] >= 1
    assert {x["request_id"] for x in lines} & ids == {again.headers["x-request-id"]}  # the newest of the two
    assert all(x["source"] == "checked" and x["teacher"] == "frontier" for x in lines)
    assert card["teachers"]["frontier"]["allowed_by"] == "policy.distillation.allow"
    first = lines[0]
    assert first["text"].startswith("<|im_start|>system\n") and first["text"].endswith("<|im_end|>\n")
    assert first["text"].startswith(first["prompt"]) and first["prompt"].endswith("<|im_start|>assistant\n")
    for name in ("train.jsonl", "validation.jsonl"):
        assert card["files"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert json.loads((out / "card.json").read_text())["files"] == card["files"]

    # a plain call on the route: a golden input sent as it renders is left out too; a rated answer goes in
    as_rendered = chat(gw, "Write one line about: the golden input")
    liked = chat(gw, "a question someone liked")
    disliked = chat(gw, "a question someone did not like")
    assert all(captured(gw, r.headers["x-request-id"]) for r in (as_rendered, liked, disliked))
    for r, score in ((liked, "up"), (disliked, "down")):
        fb = httpx.post(gw.url + "/v1/feedback", json={"request_id": r.headers["x-request-id"], "score": score})
        assert fb.status_code == 200, fb.text
    by_route = tmp_path / "by-route"
    done = run_cli("dataset", "build", "--config", str(allowed), "--tenant", "anonymous", "--route", "auto",
                   "--sources", "rated", "--out", str(by_route), "--json")
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)
    lines = [json.loads(x) for f in ("train.jsonl", "validation.jsonl")
             for x in (by_route / f).read_text().splitlines()]
    assert [x["request_id"] for x in lines] == [liked.headers["x-request-id"]]
    assert as_rendered.headers["x-request-id"] not in {x["request_id"] for x in lines}
    assert card["counts"]["excluded"]["golden"] >= 2 and card["counts"]["excluded"]["rated_bad"] == 1
    assert card["counts"]["by_source"]["rated"] == 1 and card["counts"]["validation"] == 0  # one episode: training


def test_forget_a_request_then_a_tenant_and_audit_still_verifies(gw: Gateway) -> None:
    a = chat(gw, "forget me please").headers["x-request-id"]
    b = chat(gw, "and me too").headers["x-request-id"]
    assert captured(gw, a) and captured(gw, b)
    bad = run_cli("data", "forget", "--db", str(gw.db))
    assert bad.returncode == 2 and "--tenant" in bad.stderr
    one = run_cli("data", "forget", "--db", str(gw.db), "--request", a, "--by", "dpo", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["captures"] == 1
    assert _captured(gw, a) == [] and captured(gw, b)
    verify = run_cli("audit", "verify", "--db", str(gw.db))
    assert verify.returncode == 0, verify.stderr
    tail = run_cli("audit", "tail", "-n", "50", "--json", "--db", str(gw.db))
    entries = [json.loads(x)["payload"] for x in tail.stdout.splitlines()]
    erasure = [p for p in entries if p.get("event") == "erasure"]
    assert erasure[-1] == {"event": "erasure", "scope": "request", "request_id": a, "tenant": None, "captures": 1,
                           "answers": 1, "labels": 0, "by": "dpo"}
    everyone = run_cli("data", "forget", "--db", str(gw.db), "--tenant", "anonymous", "--json")
    assert everyone.returncode == 0 and json.loads(everyone.stdout)["captures"] >= 1
    assert _captured(gw, None) == []
    assert run_cli("audit", "verify", "--db", str(gw.db)).returncode == 0
    missing = run_cli("data", "forget", "--db", str(gw.db) + ".nope", "--tenant", "x")
    assert missing.returncode == 2 and "no database" in missing.stderr


def test_guards_off_streams_are_kept_whole_and_scrubbed(gateway_factory: Any, upstream: Upstream,
                                                         anthropic_upstream: Upstream) -> None:
    """Without guards no pseudonymized copy exists: the text is stored scrubbed of pattern PII and
    secrets, and a streamed answer (not otherwise kept whole) is captured all the same."""
    cfg = hybrid_config(upstream.url, anthropic_upstream.url)
    cfg["routes"]["remote-only"]["capture"] = "on"
    g = gateway_factory(cfg)
    msg = f"mail {EMAIL} about key {SECRET} please"
    with g.openai().chat.completions.with_streaming_response.create(
            model="remote-only", messages=[{"role": "user", "content": msg}], stream=True, max_tokens=64) as resp:
        rid = resp.headers["x-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == f"echo: {msg}"
    [row] = captured(g, rid)
    stored = row["messages"] + row["answers"][0]["text"]
    assert EMAIL not in stored and SECRET not in stored
    assert "[EMAIL_ADDRESS]" in row["answers"][0]["text"] and row["answers"][0]["text"].startswith("echo: mail ")


def test_a_shadow_answer_and_its_verdict_are_captured_on_postgresql(gateway_factory: Any, tmp_path: Path,
                                                                    pg_schema: str) -> None:
    """A learned route's shadow call (the strong engine, judged after the client has its answer) is
    kept beside the captured request, in PostgreSQL; the build takes it as distillation."""
    from tests.conftest import PG_DSN
    from tests.test_learning_gateway import ask, config
    from tests.test_learning_loop import router_on, synthetic
    from turnout.evals.dataset_build import SOURCES, classify
    from turnout.ledger.capture import PostgresCaptures
    from turnout.testing.procs import control, start_server

    with start_server("turnout.testing.upstream") as weak, start_server("turnout.testing.upstream") as strong:
        control(weak.url, "scenarios", {"replies": {"fake-small": ["#### 7"]}})
        control(strong.url, "scenarios", {"replies": {"fake-big": ["#### 8"]}})
        cfg = config(weak.url, strong.url, router_on(synthetic(300, seed=8)).save(tmp_path / "r.npz"), guards=False)
        cfg["routes"]["auto"]["capture"] = "on"
        cfg["storage"] = {"postgres_dsn": PG_DSN, "postgres_schema": pg_schema}
        gw = gateway_factory(cfg)
        rid = ask(gw.url, "What is 3 + 4?").headers["x-request-id"]
        store = PostgresCaptures(PG_DSN, pg_schema)
        try:
            import time

            deadline = time.monotonic() + 30
            while True:
                rows = store.rows(tenants=["anonymous"])
                if (rows and len(rows[0]["answers"]) == 2) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            store.close()
    [row] = rows
    assert row["request_id"] == rid and row["route"] == "auto" and json.loads(row["messages"]) == [
        {"role": "user", "content": "What is 3 + 4?"}]
    assert [(a["role"], a["engine"], a["text"], a["judge"], a["score"]) for a in row["answers"]] == [
        ("answer", "small", "#### 7", "exact-answer", 0.0), ("shadow", "big", "#### 8", "exact-answer", 1.0)]
    source, answer = classify(row, SOURCES, 0.75)
    assert (source, answer["engine"]) == ("distill", "big")
