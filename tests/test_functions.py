"""Functions (fn:NAME) over real sockets: a gateway subprocess in front of the loopback OpenAI
upstream, which stands in for both a local engine ("fake-small", locality local) and a frontier
engine ("fake-big", remote) and plays scripted answers per model name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream
from turnout.cli.main import main as cli
from turnout.config import parse_config
from turnout.functions.spec import FunctionError, load_functions

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "functions"
VALID = '{"vendor": "ACME Tools Ltd", "invoice_number": "INV-2041", "total": 1250.0, "currency": "EUR"}'
INVOICE = {"text": "ACME Tools Ltd\nInvoice no. INV-2041\nTotal due: 1,250.00 EUR"}


def config(up: str, tmp: Path, functions: Path) -> dict[str, Any]:
    def fake(model: str, locality: str, prices: dict[str, float]) -> dict[str, Any]:
        return {"dialect": "openai", "locality": locality, "base_url": up + "/v1", "model": model,
                "pricing": prices, "resilience": dict(FAST_RESILIENCE)}

    return {
        "engines": {"small": fake("fake-small", "local", {"hourly_cost": 0.05}),
                    "big": fake("fake-big", "remote", {"input_per_m": 2.5, "output_per_m": 10.0})},
        "routes": {"private": {"chain": ["small"]}, "strong": {"chain": ["big"]}},
        "guards": {"enabled": False},
        "storage": {"sqlite_path": str(tmp / "ledger.sqlite")},
        "functions": {"path": str(functions)},
    }


def functions_dir(tmp: Path) -> Path:
    """A copy of examples/functions, so tests can edit templates."""
    dest = tmp / "functions"
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns("turnout.yaml", "baseline.json"))
    return dest


def call(gw: Gateway, name: str, variables: dict[str, Any], key: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": f"fn:{name}", "messages": [{"role": "user", "content": json.dumps(variables)}], **kw}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def script(up: Upstream, **replies: list[str]) -> None:
    up.client.post("/__control/scenarios", json={"replies": {m.replace("_", "-"): r for m, r in replies.items()}}
                   ).raise_for_status()


# ---- loading: one clear error naming the file and line ----------------------------------------
@pytest.mark.parametrize("edit, where, says", [
    (("extract_invoice/user.j2", "Invoice:\n{{ text }}\nfrom {{ vendr }}\n"), "user.j2:3", "vendr"),
    (("extract_invoice/user.j2", "Invoice:\n{% if text %}\n{{ text }\n"), "user.j2:3", "syntax error"),
    (("extract_invoice/output.schema.json", '{\n  "type": "object",\n  "properties": {"total": {"type": "numbr"}}\n}'),
     "output.schema.json:3", "does not compile"),
    (("extract_invoice/output.schema.json", '{\n  "type": "object",\n  "properties": {,}\n}'),
     "output.schema.json:3", "not valid JSON"),
    (("extract_invoice/golden.jsonl", '{"variables": {"text": "x"}, "contains": "x"}\n{"variables": {"txt": "x"}, '
      '"contains": "x"}\n'), "golden.jsonl:2", "does not render"),
    (("summarize/function.yaml", "variants:\n  plain:\n    user: user.j2\n    route: private\n    wieght: 2\n"),
     "function.yaml:5", "wieght"),
    (("summarize/function.yaml", "variants:\n  plain:\n    user: user.j2\n    route: nowhere\n"),
     "function.yaml:4", "neither a route nor an engine"),
])
def test_a_broken_function_is_one_error_naming_file_and_line(tmp_path: Path, edit: tuple[str, str], where: str,
                                                             says: str, capsys: pytest.CaptureFixture[str]) -> None:
    fdir = functions_dir(tmp_path)
    cfg = config("http://127.0.0.1:9", tmp_path, fdir)
    load_functions(fdir, parse_config(cfg))  # the examples load as they are
    (fdir / edit[0]).write_text(edit[1])
    with pytest.raises(FunctionError) as err:
        load_functions(fdir, parse_config(cfg))
    assert where in str(err.value) and says in str(err.value)
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(cfg))
    assert cli(["config", "check", str(path)]) == 2  # `turnout config check` says the same, exit 2
    assert where in capsys.readouterr().err


def test_config_check_lists_functions_with_template_hashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fdir = functions_dir(tmp_path)
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(config("http://127.0.0.1:9", tmp_path, fdir)))
    assert cli(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    fns = load_functions(fdir)
    assert f"v1@{fns['extract_invoice'].variants['v1'].template_hash} -> private" in out
    assert "fn:summarize" in out and "2 golden item(s)" not in out  # summarize has one golden item


# ---- calling: validation, retry, escalation ---------------------------------------------------
@pytest.fixture
def fn_gateway(gateway_factory, upstream: Upstream, tmp_path: Path) -> Gateway:  # type: ignore[no-untyped-def]
    upstream.reset()
    return gateway_factory(config(upstream.url, tmp_path, functions_dir(tmp_path)))  # type: ignore[no-any-return]


def test_invalid_local_output_is_retried_then_escalated_with_the_original_input(fn_gateway: Gateway,
                                                                               upstream: Upstream) -> None:
    invented = VALID.replace("ACME Tools Ltd", "Globex Corporation")  # valid shape, vendor not in the input
    script(upstream, fake_small=["Sure! Here are the fields.", invented], fake_big=[VALID])
    resp = call(fn_gateway, "extract_invoice", INVOICE)
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.json()["choices"][0]["message"]["content"]) == json.loads(VALID)
    h = resp.headers
    assert h["x-turnout-function"] == "extract_invoice" and h["x-turnout-variant"] == "v1"
    assert h["x-turnout-engine"] == "big" and h["x-turnout-function-attempts"] == "first,retry,escalated"
    assert h["x-turnout-escalated"] == "invalid_output" and h["x-turnout-function-outcome"] == "valid"
    rows = fn_gateway.ledger()
    assert [r["function_attempt"] for r in rows] == ["first", "retry", "escalated"]
    assert rows[0]["function_outcome"].startswith("invalid: not JSON")
    assert rows[1]["function_outcome"].startswith("invalid: vendor_copied")  # the declared check, not the schema
    assert rows[2]["function_outcome"] == "valid" and rows[2]["engine"] == "big"
    assert {r["template_hash"] for r in rows} == {h["x-turnout-template-hash"]}
    assert rows[2]["request_id"] == h["x-request-id"]  # feedback on the answer lands on the escalated row
    sent = [r["body"] for r in upstream.requests() if r["path"] == "/v1/chat/completions"]
    assert [b["model"] for b in sent] == ["fake-small", "fake-small", "fake-big"]
    assert sent[2]["messages"] == sent[0]["messages"]  # the escalation gets the original input
    assert "INV-2041" in sent[0]["messages"][-1]["content"]
    assert sent[1]["messages"][-2] == {"role": "assistant", "content": "Sure! Here are the fields."}
    assert "not JSON" in sent[1]["messages"][-1]["content"]  # the retry is told what was wrong
    assert sent[0]["response_format"]["type"] == "json_schema"  # structured output asked of the engine
    assert sent[0]["response_format"]["json_schema"]["schema"]["required"] == [
        "vendor", "invoice_number", "total", "currency"]


def test_a_retry_that_fixes_the_answer_stays_local(fn_gateway: Gateway, upstream: Upstream) -> None:
    script(upstream, fake_small=['{"vendor": "ACME Tools Ltd"}', VALID])
    resp = call(fn_gateway, "extract_invoice", INVOICE)
    assert resp.status_code == 200 and resp.headers["x-turnout-engine"] == "small"
    assert resp.headers["x-turnout-function-attempts"] == "first,retry" and "x-turnout-escalated" not in resp.headers
    rows = fn_gateway.ledger()
    assert "required property" in rows[0]["function_outcome"] and rows[1]["function_outcome"] == "valid"


def test_no_valid_answer_anywhere_is_a_502_not_a_broken_answer(fn_gateway: Gateway, upstream: Upstream) -> None:
    script(upstream, fake_small=["no", "still no"], fake_big=['{"vendor": 5}'])
    resp = call(fn_gateway, "extract_invoice", INVOICE)
    assert resp.status_code == 502
    err = resp.json()["error"]
    assert err["code"] == "invalid_output" and "output schema" in err["message"]
    assert resp.headers["x-turnout-function-attempts"] == "first,retry,escalated"
    assert [r["function_outcome"][:8] for r in fn_gateway.ledger()] == ["invalid:"] * 3


def test_bad_variables_are_a_400_and_recorded(fn_gateway: Gateway, upstream: Upstream) -> None:
    missing = call(fn_gateway, "extract_invoice", {"txt": "hello"})
    assert missing.status_code == 400
    err = missing.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "function_variables"
    assert "required property" in err["message"] or "additional" in err["message"].lower()
    not_json = httpx.post(fn_gateway.url + "/v1/chat/completions", timeout=30, json={
        "model": "fn:extract_invoice", "messages": [{"role": "user", "content": "please extract"}]})
    assert not_json.status_code == 400 and "JSON object" in not_json.json()["error"]["message"]
    unknown = call(fn_gateway, "nope", {})
    assert unknown.status_code == 404 and "fn:extract_invoice" in unknown.json()["error"]["message"]
    rows = fn_gateway.ledger()
    assert [r["http_status"] for r in rows] == [400, 400, 404]
    assert upstream.requests() == []  # nothing reached an engine
    via_metadata = httpx.post(fn_gateway.url + "/v1/chat/completions", timeout=30, json={
        "model": "fn:extract_invoice", "messages": [{"role": "user", "content": "see metadata"}],
        "metadata": {"variables": json.dumps(INVOICE)}})
    assert via_metadata.status_code == 502  # the echo is not JSON: checked, retried, escalated, refused
    assert "INV-2041" in upstream.requests()[0]["body"]["messages"][-1]["content"]


def test_undeclared_variables_are_refused_by_name_and_self_is_an_ordinary_name(gateway_factory, upstream: Upstream,
                                                                               tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upstream.reset()
    fns = functions_dir(tmp_path)
    lax = fns / "extract_invoice" / "input.schema.json"  # no additionalProperties: JSON Schema lets extras in
    lax.write_text(json.dumps({k: v for k, v in json.loads(lax.read_text()).items() if k != "additionalProperties"}))
    open_ = fns / "summarize" / "input.schema.json"  # extras explicitly allowed
    open_.write_text(json.dumps({**json.loads(open_.read_text()), "additionalProperties": True}))
    gw = gateway_factory(config(upstream.url, tmp_path, fns))
    for extra in ("self", "sneaky"):
        r = call(gw, "extract_invoice", {**INVOICE, extra: "x"})
        assert r.status_code == 400, r.text  # "self" was a 500 (render's own parameter), "sneaky" passed
        err = r.json()["error"]
        assert err["code"] == "function_variables" and f"variable '{extra}' is not declared" in err["message"]
    assert upstream.requests() == []  # refused before any engine
    script(upstream, fake_small=["Cats sleep."])
    ok = call(gw, "summarize", {"text": "Cats sleep all day.", "words": 10, "self": "x"})
    assert ok.status_code == 200, ok.text  # declared extras may be named anything
    assert "Traceback" not in gw.proc.output()


def test_streaming_a_checked_function_and_an_unchecked_one(fn_gateway: Gateway, upstream: Upstream) -> None:
    script(upstream, fake_small=["not json", VALID])
    client = fn_gateway.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="fn:extract_invoice", messages=[{"role": "user", "content": json.dumps(INVOICE)}], stream=True,
        stream_options={"include_usage": True})
    assert raw.headers["x-turnout-function-attempts"] == "first,retry"
    chunks = list(raw.parse())
    assert json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)) == json.loads(VALID)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    raw = client.chat.completions.with_raw_response.create(
        model="fn:summarize", messages=[{"role": "user", "content": json.dumps({"text": "Cats nap.", "words": 10})}],
        stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text.startswith("echo: Cats nap.")  # streamed straight through: nothing to judge
    assert raw.headers["x-turnout-function-outcome"] == "unchecked"
    rows = fn_gateway.ledger_after(2)
    assert rows and rows[-1]["function"] == "summarize" and rows[-1]["stream"] == 1


# ---- experiments: sticky episodes, a bandit that moves traffic, tenants apart -------------------
SUMMARY_INPUT = {"text": "Cats sleep for most of the day.", "words": 10}


def test_bandit_moves_traffic_to_the_better_variant_per_tenant(gateway_factory, upstream: Upstream,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:

    from turnout.governance.key_store import SQLiteKeyStore

    upstream.reset()
    fdir = functions_dir(tmp_path)
    spec = fdir / "summarize" / "function.yaml"
    spec.write_text(spec.read_text().replace("min_samples: 20", "min_samples: 4"))
    gw: Gateway = gateway_factory({**config(upstream.url, tmp_path, fdir), "auth": "keys"})
    with SQLiteKeyStore(gw.db) as keys:  # a key works as soon as it exists (the key store is asked per request)
        acme, globex = (keys.create(t, roles=("user", "viewer")).plaintext for t in ("acme", "globex"))

    def ask(key: str, episode: str) -> httpx.Response:
        resp = call(gw, "summarize", SUMMARY_INPUT, key=key, metadata={"episode": episode})
        assert resp.status_code == 200, resp.text
        return resp

    first: dict[str, str] = {}
    for i in range(24):  # acme's users like the bullet points and dislike the plain summary
        resp = ask(acme, f"ep-{i}")
        first[f"ep-{i}"] = v = resp.headers["x-turnout-variant"]
        fb = httpx.post(gw.url + "/v1/feedback", timeout=10, headers={"Authorization": f"Bearer {acme}"}, json={
            "request_id": resp.headers["x-request-id"], "score": "up" if v == "bullets" else "down"})
        assert fb.status_code == 200
    assert set(first.values()) == {"plain", "bullets"}  # both were tried
    for ep in list(first)[:6]:  # sticky: an episode keeps its variant whatever the bandit says now
        assert ask(acme, ep).headers["x-turnout-variant"] == first[ep]
    later = [ask(acme, f"new-{i}").headers["x-turnout-variant"] for i in range(20)]
    assert later.count("bullets") >= 17, later
    auth = {"Authorization": f"Bearer {acme}"}
    rep = httpx.get(gw.url + "/v1/turnout/functions/summarize/report", headers=auth, timeout=10).json()
    by = {r["variant"]: r for r in rep["variants"]}
    assert by["bullets"]["feedback_mean"] == 1.0 and by["plain"]["feedback_mean"] == 0.0
    assert by["bullets"]["calls"] + by["plain"]["calls"] == 24 + 6 + 20
    assert rep["tenant"] == "acme" and rep["allocation"]["p_best"]["bullets"] > 0.95
    if by["plain"]["feedback_n"] >= 4:  # every variant has min_samples: the experiment has stopped
        assert rep["allocation"]["winner"] == "bullets" and rep["allocation"]["shares"] == {"bullets": 1.0}
    # globex shares nothing with acme: not its rows, not its feedback, not its traffic shares
    other = httpx.get(gw.url + "/v1/turnout/functions/summarize/report", timeout=10,
                      headers={"Authorization": f"Bearer {globex}"}).json()
    assert other["tenant"] == "globex" and other["variants"] == []
    assert 0.35 < other["allocation"]["shares"]["bullets"] < 0.65
    theirs = [ask(globex, f"g-{i}").headers["x-turnout-variant"] for i in range(16)]
    assert set(theirs) == {"plain", "bullets"}
    refused = httpx.get(gw.url + "/v1/turnout/functions/summarize/report", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    # the operator's CLI report reads every tenant's rows from the ledger
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(config(upstream.url, tmp_path, tmp_path / "functions")))
    assert cli(["functions", "report", "summarize", "--config", str(path), "--db", str(gw.db), "--json"]) == 0


def test_the_bandit_stops_only_when_one_variant_is_best_with_the_stated_confidence(tmp_path: Path) -> None:
    from turnout.functions.experiment import allocate

    fn = load_functions(functions_dir(tmp_path))["summarize"]  # bandit, confidence 0.95, min_samples 20
    clear = allocate(fn, {"bullets": (30, 27.0), "plain": (30, 9.0)})
    assert clear.winner == "bullets" and clear.shares == {"bullets": 1.0}
    few = allocate(fn, {"bullets": (30, 27.0), "plain": (5, 1.0)})  # plain has too little evidence to stop
    assert few.winner is None and few.shares["bullets"] > 0.9 and few.shares["plain"] >= 0.05 / 1.05
    close = allocate(fn, {"bullets": (40, 21.0), "plain": (40, 20.0)})
    assert close.winner is None and 0.3 < close.shares["bullets"] < 0.8


# ---- golden gate, diffs ----------------------------------------------------------------------------
def test_golden_gate_fails_on_a_regressed_template(gateway_factory, upstream: Upstream, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    upstream.reset()
    fdir = functions_dir(tmp_path)
    (fdir / "summarize" / "golden.jsonl").write_text(
        '{"id": "cats", "variables": {"text": "Cats sleep all day.", "words": 10}, "contains": "cats sleep"}\n'
        '{"id": "dogs", "variables": {"text": "Dogs bark at night.", "words": 10}, "regex": "dogs? bark"}\n')
    cfg = config(upstream.url, tmp_path, fdir)
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(cfg))
    gw = gateway_factory(cfg)
    assert cli(["eval", "function", "summarize", "--config", str(path), "--url", gw.url, "--save-baseline"]) == 0
    base = json.loads((fdir / "summarize" / "baseline.json").read_text())
    assert {v: r["pass_rate"] for v, r in base["variants"].items()} == {"plain": 1.0, "bullets": 1.0}
    assert base["weights_sha256"].keys() >= {"small", "big"}
    old = base["variants"]["plain"]["template_hash"]
    gw.proc.stop()
    (fdir / "summarize" / "user.j2").write_text("Summarise the text you were given.\n")  # drops {{ text }}
    capsys.readouterr()
    gw = gateway_factory(cfg)
    assert cli(["eval", "function", "summarize", "--config", str(path), "--url", gw.url, "--variant", "plain"]) == 1
    out = capsys.readouterr().out
    assert f"plain: pass rate fell 1.000 -> 0.000 (template {old} -> " in out
    assert "2 item(s) passed in the baseline and fail now: cats, dogs" in out
    assert "engine small: weights sha256" in out
    listed = {m["id"]: m["turnout"] for m in httpx.get(gw.url + "/v1/models", timeout=10).json()["data"]}
    assert listed["fn:summarize"]["kind"] == "function"
    assert listed["fn:summarize"]["variants"]["plain"]["template_hash"] != old
    rows = gw.ledger()
    assert {r["variant"] for r in rows} == {"plain"} and {r["template_hash"] for r in rows} != {old}


def test_diff_between_variants_and_git_revisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess

    fdir = functions_dir(tmp_path)
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(config("http://127.0.0.1:9", tmp_path, fdir)))
    assert cli(["functions", "diff", "summarize", "plain", "bullets", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "-Summarise the user's text in at most {{ words }} words." in out and "+Summarise the user's text as" in out
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "functions"], check=True)
    (fdir / "summarize" / "plain.j2").write_text("Summarise in {{ words }} words or fewer.\n")
    assert cli(["functions", "diff", "summarize", "HEAD", "WORKTREE", "--variant", "plain", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "+Summarise in {{ words }} words or fewer." in out and "template hash: " in out and "(same)" not in out


# ---- the embedded model: structured output through llama.cpp's grammar -----------------------------
@pytest.mark.slow
def test_extraction_on_the_embedded_model_answers_schema_valid_json(gateway_factory, upstream: Upstream,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    import jsonschema_rs

    upstream.reset()
    cfg = config(upstream.url, tmp_path, functions_dir(tmp_path))
    cfg["engines"]["small"] = {"dialect": "llamacpp", "n_ctx": 1024}
    # without llama.cpp's AMX/repack buffers: they crash the helper VMs (turnout.engines.llamacpp._extra_buffers)
    gw: Gateway = gateway_factory(cfg)
    script(upstream, fake_big=[VALID])
    resp = call(gw, "extract_invoice", INVOICE)
    assert resp.status_code == 200, resp.text
    schema = json.loads((EXAMPLES / "extract_invoice" / "output.schema.json").read_text())
    first = gw.ledger()[0]
    assert first["engine"] == "small" and first["function_attempt"] == "first"
    assert "not JSON" not in (first["function_outcome"] or "")  # the grammar made the 135M model write JSON
    assert "output schema" not in (first["function_outcome"] or "")  # ... of the schema's shape
    assert jsonschema_rs.is_valid(schema, json.loads(resp.json()["choices"][0]["message"]["content"]))


def test_a_golden_metric_bandit_reads_the_saved_baseline(tmp_path: Path) -> None:
    from turnout.functions.experiment import allocate, draw, evidence_for

    fdir = functions_dir(tmp_path)
    spec = fdir / "summarize" / "function.yaml"
    spec.write_text(spec.read_text().replace("metric: feedback", "metric: golden").replace("min_samples: 20",
                                                                                          "min_samples: 10"))
    fn = load_functions(fdir)["summarize"]
    assert evidence_for(fn, None, "acme") == {}  # no baseline yet: no evidence, even shares
    assert abs(allocate(fn, {}).shares["plain"] - 0.5) < 0.05
    (fdir / "summarize" / "baseline.json").write_text(json.dumps({"variants": {
        "plain": {"n": 40, "passed": 38, "pass_rate": 0.95}, "bullets": {"n": 40, "passed": 20, "pass_rate": 0.5}}}))
    alloc = allocate(fn, evidence_for(fn, None, "acme"))
    assert alloc.winner == "plain" and alloc.shares == {"plain": 1.0}
    assert draw("summarize", "acme", "e1") == draw("summarize", "acme", "e1") != draw("summarize", "globex", "e1")


def test_the_report_compares_feedback_before_and_after_a_template_change(upstream: Upstream, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from turnout.testing.procs import start_server

    upstream.reset()
    fdir = functions_dir(tmp_path)
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(config(upstream.url, tmp_path, fdir)))
    db = tmp_path / "one-ledger.sqlite"

    def round_of(score: str) -> None:
        with start_server("turnout", "serve", "--config", str(path), "--db", str(db),
                          timeout=60, cwd=str(tmp_path)) as gw:
            for i in range(3):
                resp = call(gw, "summarize", SUMMARY_INPUT, metadata={"variant": "plain"})  # type: ignore[arg-type]
                assert resp.status_code == 200 and resp.headers["x-turnout-variant"] == "plain"
                assert httpx.post(gw.url + "/v1/feedback", timeout=10, json={
                    "request_id": resp.headers["x-request-id"], "score": score}).status_code == 200

    round_of("down")
    (fdir / "summarize" / "plain.j2").write_text("Summarise in {{ words }} words or fewer; plain sentences.\n")
    round_of("up")
    capsys.readouterr()
    assert cli(["functions", "report", "summarize", "--config", str(path), "--db", str(db), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    plain = [r for r in rep["variants"] if r["variant"] == "plain"]
    by_version = {r["current"]: r for r in plain}
    assert len(plain) == 2 and by_version[False]["feedback_mean"] == 0.0 and by_version[True]["feedback_mean"] == 1.0
    assert by_version[True]["template_hash"] == load_functions(fdir)["summarize"].variants["plain"].template_hash
    assert by_version[True]["calls"] == by_version[False]["calls"] == 3
    assert cli(["functions", "report", "summarize", "--config", str(path), "--db", str(db)]) == 0
    assert "* an earlier template version of that variant" in capsys.readouterr().out


def test_functions_on_the_postgres_ledger(gateway_factory, upstream: Upstream, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          pg_schema: str) -> None:
    import psycopg

    from tests.conftest import PG_DSN

    upstream.reset()
    cfg = config(upstream.url, tmp_path, functions_dir(tmp_path))
    cfg["storage"] = {"postgres_dsn": PG_DSN, "postgres_schema": pg_schema}
    gw: Gateway = gateway_factory(cfg)
    script(upstream, fake_small=["no", "no"], fake_big=[VALID])
    assert call(gw, "extract_invoice", INVOICE).headers["x-turnout-function-attempts"] == "first,retry,escalated"
    got = [call(gw, "summarize", SUMMARY_INPUT, metadata={"episode": "pg-ep"}).headers["x-turnout-variant"]
           for _ in range(3)]  # sticky episodes, read from PostgreSQL
    seen = got[0]
    assert got == [seen] * 3
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        rows = conn.execute(f"SELECT function, variant, function_attempt, function_outcome, episode "
                            f"FROM {pg_schema}.requests ORDER BY id").fetchall()
    assert [r[2] for r in rows[:3]] == ["first", "retry", "escalated"] and rows[2][3] == "valid"
    assert {r[4] for r in rows[3:]} == {"pg-ep"} and {r[1] for r in rows[3:]} == {seen}
    rep = httpx.get(gw.url + "/v1/turnout/functions/extract_invoice/report", timeout=10).json()
    assert "variants" in rep, rep
    (v1,) = rep["variants"]
    assert v1["calls"] == 1 and v1["escalation_rate"] == 1.0 and v1["retry_rate"] == 1.0 and v1["invalid_answers"] == 2
