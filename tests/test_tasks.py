"""Tasks (issue 16) over real parts: a keys-mode gateway process, the loopback OpenAI-wire fake
as the frontier planner (scripted plans: named as a fake, it stands in for a paid API), a
second fake engine declared ``local`` as the executor (the embedded model is the executor in
``test_sensitive_input_stays_local_embedded``), the real HTTP toolbox (outbox and tickets),
real SQLite files, kill -9 and restarts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_RESILIENCE
from tests.keyed import Keyed, cli_key, serve, write_config
from turnout.testing.procs import Proc, start_server


@pytest.fixture(scope="module")
def fake() -> Iterator[Proc]:
    with start_server("turnout.testing.upstream", "--port", "0", add_port=False) as p:
        yield p


@pytest.fixture
def toolbox() -> Iterator[Proc]:
    with start_server("turnout.testing.toolbox", "--port", "0", add_port=False) as p:
        yield p


def config(fake_url: str, tools_url: str, tmp: Path, **tasks: Any) -> dict[str, Any]:
    tools = {
        "send_email": {"url": tools_url + "/send_email", "effect": "irreversible", "approval": "always",
                       "description": "send an e-mail to a customer",
                       "parameters": {"type": "object", "required": ["to", "body"],
                                      "properties": {"to": {"type": "string"}, "subject": {"type": "string"},
                                                     "body": {"type": "string"}}}},
        "create_ticket": {"url": tools_url + "/create_ticket", "effect": "irreversible", "approval": "when",
                          "when": ["priority == urgent"], "parameters": {"type": "object", "required": ["title"]}},
        "search_tickets": {"url": tools_url + "/search_tickets", "effect": "read_only", "approval": "never"},
    }
    tools.update(tasks.pop("tools", {}))
    return {
        "auth": "keys",
        "engines": {
            "gpt": {"dialect": "openai", "locality": "remote", "base_url": fake_url + "/v1",
                         "model": "fake-planner", "pricing": {"input_per_m": 5.0, "output_per_m": 15.0},
                         "resilience": dict(FAST_RESILIENCE)},
            "small": {"dialect": "openai", "locality": "local", "base_url": fake_url + "/v1",
                      "model": "fake-local", "resilience": dict(FAST_RESILIENCE)},
        },
        "routes": {"frontier": {"chain": ["gpt"]}, "local": {"chain": ["small"]}},
        "guards": {"enabled": False},
        "storage": {"sqlite_path": str(tmp / "turnout.sqlite")},
        "tasks": {"planner_route": "frontier", "executor_route": "local", "poll_s": 0.1, "lease_s": 2,
                  "tools": tools, **tasks},
    }


def kill9(proc: Proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)


def script(fake: Proc, *plans: Any) -> None:
    httpx.post(fake.url + "/__control/reset", timeout=5)
    replies = [p if isinstance(p, str) else json.dumps(p) for p in plans]
    r = httpx.post(fake.url + "/__control/scenarios", json={"replies": {"fake-planner": replies}}, timeout=5)
    assert r.status_code == 200, r.text


def planner_requests(fake: Proc) -> list[dict[str, Any]]:
    entries = httpx.get(fake.url + "/__control/requests", timeout=5).json()
    entries = entries.get("requests", entries) if isinstance(entries, dict) else entries
    return [e for e in entries if "fake-planner" in json.dumps(e)]


def start(tmp: Path, cfg: dict[str, Any], tenants: dict[str, tuple[str, str]]) -> Keyed:
    path = write_config(tmp, cfg)
    keys = {name: cli_key(path, tenant, "--roles", roles) for name, (tenant, roles) in tenants.items()}
    return Keyed(serve(path), path, keys)


def wait_state(gw: Keyed, tid: str, *states: str, who: str = "alice", timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        t = gw.call("GET", f"/v1/turnout/tasks/{tid}", who).json()
        if t.get("state") in states:
            return t
        assert time.monotonic() < deadline, f"task stayed {t.get('state')}: {t}"
        time.sleep(0.1)


TRIAGE = {"steps": [
    {"id": "summary", "kind": "llm", "instruction": "Summarise the customer's mail in one line.",
     "inputs": ["input.mail"]},
    {"id": "reply", "kind": "tool", "tool": "send_email", "reason": "answer the customer",
     "arguments": {"to": "{{input.sender}}", "subject": "Re: your invoice", "body": "We read: {{steps.summary}}"}}],
    "result": "reply"}
MAIL = {"mail": "My invoice 2291 shows the wrong VAT rate.", "sender": "dana@customer.example"}
PEOPLE = {"alice": ("acme", "user"), "bob": ("acme", "approver"), "eve": ("globex", "approver"),
          "carol": ("acme", "user,approver")}


def test_approve_four_eyes_tenancy_audit_and_ledger(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    script(fake, TRIAGE)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path), PEOPLE)
    with gw.proc:
        r = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "answer the mail", "inputs": MAIL,
                                                          "tools": ["send_email"]})
        assert r.status_code == 201, r.text
        tid = r.json()["id"]
        t = wait_state(gw, tid, "awaiting_approval")
        assert [s["step_id"] for s in t["steps"]] == ["plan-1", "summary"]
        assert t["steps"][0]["engine"] == "gpt" and t["steps"][1]["locality"] == "local"
        assert httpx.get(toolbox.url + "/calls").json()["calls"] == []  # nothing sent before approval
        # the inbox: the starter cannot read it (role), another tenant's approver does not see the gate
        assert gw.call("GET", "/v1/turnout/approvals", "alice").status_code == 403
        assert gw.call("GET", "/v1/turnout/approvals", "eve").json()["data"] == []
        gates = gw.call("GET", "/v1/turnout/approvals", "bob").json()["data"]
        assert len(gates) == 1 and gates[0]["tool"] == "send_email" and gates[0]["reason"] == "answer the customer"
        assert gates[0]["arguments"]["to"] == "dana@customer.example"
        gid = gates[0]["id"]
        r = gw.call("POST", f"/v1/turnout/approvals/{gid}", "eve", {"decision": "approve"})
        assert r.status_code == 404  # another tenant's gate is unknown to it
        assert gw.call("GET", f"/v1/turnout/tasks/{tid}", "eve").status_code == 404
        r = gw.call("POST", f"/v1/turnout/approvals/{gid}", "alice", {"decision": "approve"})
        assert r.status_code == 403
        r = gw.call("POST", f"/v1/turnout/approvals/{gid}", "bob", {"decision": "approve", "reason": "fine"})
        assert r.status_code == 200, r.text
        r = gw.call("POST", f"/v1/turnout/approvals/{gid}", "bob", {"decision": "reject"})
        assert r.status_code == 409  # decided once
        t = wait_state(gw, tid, "succeeded", "failed")
        assert t["state"] == "succeeded", t
        assert t["result"]["status"] == "sent"
        outbox = httpx.get(toolbox.url + "/calls").json()["outbox"]
        assert len(outbox) == 1 and outbox[0]["to"] == "dana@customer.example"
        assert outbox[0]["body"].startswith("We read: ")
        assert t["cost_usd"] > 0 and t["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in t["steps"]))
        # the SSE stream replays the whole history and ends
        with httpx.stream("GET", gw.url + f"/v1/turnout/tasks/{tid}/events",
                          headers={"Authorization": f"Bearer {gw.token('alice')}"}, timeout=10) as s:
            kinds = [line.split(": ", 1)[1] for line in s.iter_lines() if line.startswith("event: ")]
        assert kinds[0] == "created" and "awaiting_approval" in kinds and "decision" in kinds and kinds[-1] == "end"
    db = sqlite3.connect(tmp_path / "turnout.sqlite")
    rows = db.execute("SELECT request_id, engine, key_id FROM requests WHERE labels LIKE ?", (f"%task:{tid}%",)).fetchall()
    assert {r[1] for r in rows} == {"gpt", "small"}
    assert {r[2] for r in rows} == {gw.keys["alice"]["key_id"]}
    assert {r[0] for r in rows} == {s["request_id"] for s in t["steps"] if s["request_id"]}
    audit = [json.loads(p) for (p,) in db.execute("SELECT payload FROM audit_entries")]
    decisions = [a for a in audit if a.get("event") == "task_approval"]
    assert decisions == [{"event": "task_approval", "gate": gid, "task": tid, "tenant": "acme", "tool": "send_email",
                          "decision": "approved", "by": gw.keys["bob"]["key_id"], "reason": "fine",
                          "arguments": gates[0]["arguments"], "edited": None}]


def test_four_eyes_same_key_with_both_roles(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    script(fake, TRIAGE)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path), PEOPLE)
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "carol", {"goal": "g", "inputs": MAIL, "tools": ["send_email"]}).json()["id"]
        wait_state(gw, tid, "awaiting_approval", who="carol")
        gid = gw.call("GET", "/v1/turnout/approvals", "carol").json()["data"][0]["id"]
        r = gw.call("POST", f"/v1/turnout/approvals/{gid}", "carol", {"decision": "approve"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "four_eyes"


def test_reject_replans_with_reason_and_edit_arguments(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    second = {"steps": [{"id": "reply2", "kind": "tool", "tool": "send_email", "reason": "polite version",
                         "arguments": {"to": "{{input.sender}}", "body": "Sorry about the VAT."}}]}
    script(fake, TRIAGE, second)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path), PEOPLE)
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL, "tools": ["send_email"]}).json()["id"]
        wait_state(gw, tid, "awaiting_approval")
        gid = gw.call("GET", "/v1/turnout/approvals", "bob").json()["data"][0]["id"]
        assert gw.call("POST", f"/v1/turnout/approvals/{gid}", "bob",
                       {"decision": "reject", "reason": "too curt, apologise"}).status_code == 200
        t = wait_state(gw, tid, "awaiting_approval", "failed")
        assert t["plan_version"] == 2 and t["replans"] == 1, t
        replanned = planner_requests(fake)[-1]
        assert "too curt, apologise" in json.dumps(replanned)
        gid2 = gw.call("GET", "/v1/turnout/approvals", "bob").json()["data"][0]["id"]
        bad = gw.call("POST", f"/v1/turnout/approvals/{gid2}", "bob", {"decision": "approve", "arguments": {"to": 3}})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_arguments"
        edited = {"to": "dana@customer.example", "body": "We are sorry: the VAT is fixed."}
        assert gw.call("POST", f"/v1/turnout/approvals/{gid2}", "bob",
                       {"decision": "approve", "arguments": edited}).status_code == 200
        t = wait_state(gw, tid, "succeeded", "failed")
        assert t["state"] == "succeeded", t
    outbox = httpx.get(toolbox.url + "/calls").json()["outbox"]
    assert outbox == [edited]


def test_deadline_expiry_rejects(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    script(fake, TRIAGE)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path, approval_deadline_s=1, max_replans=0), PEOPLE)
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL, "tools": ["send_email"]}).json()["id"]
        t = wait_state(gw, tid, "failed", "succeeded")
        assert t["state"] == "failed" and "deadline" in t["error"], t
        assert t["gates"][0]["state"] == "expired"
    assert httpx.get(toolbox.url + "/calls").json()["calls"] == []


def test_invalid_plan_repaired_once_then_fails_cleanly(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    bad = {"steps": [{"id": "x", "kind": "tool", "tool": "pay_invoice", "arguments": {}}]}
    script(fake, bad, "no json here", bad, {"steps": [{"id": "s", "kind": "llm", "instruction": "say hi"}]})
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path), PEOPLE)
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "tools": ["send_email"]}).json()["id"]
        t = wait_state(gw, tid, "failed", "succeeded")
        assert t["state"] == "failed" and "invalid after one repair" in t["error"], t
        # the repair request told the planner what was wrong
        assert "pay_invoice" in json.dumps(planner_requests(fake)[1])
        tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g2", "tools": []}).json()["id"]
        t = wait_state(gw, tid, "failed", "succeeded")
        assert t["state"] == "succeeded" and t["result"].startswith("echo:"), t
        assert [s["step_id"] for s in t["steps"]] == ["plan-1", "plan-1-repair", "s"]
        # bad input is an OpenAI-shaped 400
        r = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "tools": ["rm_rf"]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_tool"
        r = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": ""})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_step_cache_across_tasks(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    plan = {"steps": [{"id": "sum", "kind": "llm", "instruction": "Summarise.", "inputs": ["input.mail"],
                       "route": "frontier"}]}
    script(fake, plan, "The VAT rate on invoice 2291 is wrong.", plan)  # plan, the step's answer, plan
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path), PEOPLE)
    with gw.proc:
        first = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL}).json()["id"]
        a = wait_state(gw, first, "succeeded", "failed")
        second = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL}).json()["id"]
        b = wait_state(gw, second, "succeeded", "failed")
    sa, sb = a["steps"][-1], b["steps"][-1]
    assert not sa["cached"] and sa["cost_usd"] > 0
    assert sb["cached"], b
    assert sb["cost_usd"] == 0 and sb["saved_usd"] == pytest.approx(sa["cost_usd"])
    assert b["saved_usd"] == pytest.approx(sa["cost_usd"])
    assert a["result"] == b["result"] == "The VAT rate on invoice 2291 is wrong."


def test_restart_while_parked_and_kill9_mid_tool_sends_once(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    script(fake, TRIAGE)
    cfg = config(fake.url, toolbox.url, tmp_path)
    cfg["tasks"]["tools"]["send_email"]["url"] = toolbox.url + "/send_email?delay=4"
    gw = start(tmp_path, cfg, PEOPLE)
    tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL, "tools": ["send_email"]}).json()["id"]
    wait_state(gw, tid, "awaiting_approval")
    kill9(gw.proc)  # while parked
    gw = Keyed(serve(gw.config), gw.config, gw.keys)
    gid = gw.call("GET", "/v1/turnout/approvals", "bob").json()["data"][0]["id"]
    assert gw.call("POST", f"/v1/turnout/approvals/{gid}", "bob", {"decision": "approve"}).status_code == 200
    deadline = time.monotonic() + 20
    while not httpx.get(toolbox.url + "/calls").json()["calls"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    kill9(gw.proc)  # after the tool got the call, before the gateway saw its answer
    gw = Keyed(serve(gw.config), gw.config, gw.keys)
    with gw.proc:
        t = wait_state(gw, tid, "succeeded", "failed", timeout=40)
    assert t["state"] == "succeeded", t
    seen = httpx.get(toolbox.url + "/calls").json()
    assert len(seen["outbox"]) == 1  # sent exactly once
    keys = {c["idempotency_key"] for c in seen["calls"]}
    assert len(keys) == 1 and len(seen["calls"]) == 2  # the retry carried the same key


def test_two_replicas_run_each_task_once(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    plan = {"steps": [{"id": "a", "kind": "llm", "instruction": "Say which replica you are."}]}
    script(fake, *[plan] * 6)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path, cache_ttl_s=0), PEOPLE)
    other = Keyed(serve(gw.config), gw.config, gw.keys)
    with gw.proc, other.proc:
        ids = [(gw if i % 2 else other).call("POST", "/v1/turnout/tasks", "alice", {"goal": f"g{i}"}).json()["id"]
               for i in range(6)]
        done = [wait_state(gw, tid, "succeeded", "failed") for tid in ids]
    assert all(t["state"] == "succeeded" for t in done)
    assert len(planner_requests(fake)) == 6  # each task planned once, by one replica
    db = sqlite3.connect(tmp_path / "turnout.sqlite")
    owners = db.execute("SELECT task_id, COUNT(*) FROM tasks_events WHERE kind = 'leased' GROUP BY task_id").fetchall()
    assert sorted(n for _, n in owners) == [1] * 6


def test_budget_exhausted_mid_task(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    plan = {"steps": [{"id": "a", "kind": "llm", "instruction": "one", "route": "frontier", "inputs": ["input.doc"]},
                      {"id": "b", "kind": "llm", "instruction": "two {{steps.a}}", "route": "frontier"}]}
    script(fake, plan)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path, step_max_tokens=2000), {"bob": ("acme", "approver")})
    # the planner (which never sees the long input) and step a fit in the budget; after a's
    # 2000-word answer is paid for, step b's reservation does not
    gw.keys["poor"] = cli_key(gw.config, "acme", "--usd-day", "0.08")
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "poor", {"goal": "g", "inputs": {"doc": "word " * 3000}}).json()["id"]
        t = wait_state(gw, tid, "failed", "succeeded", who="poor")
    assert t["state"] == "failed" and "429" in t["error"], t
    assert [(s["step_id"], s["status"]) for s in t["steps"]] == [("plan-1", "ok"), ("a", "ok"), ("b", "error")]


@pytest.mark.slow
def test_sensitive_input_stays_local_embedded(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    """The plan asks for the frontier route; the task is sensitive, so the step runs on the
    embedded SmolLM2 and neither the planner nor any remote call ever sees the input."""
    secret = "Patient Jane Roe, MRN 88-1234-77, diagnosis code F32.1"
    plan = {"steps": [{"id": "sum", "kind": "llm", "instruction": "Summarise in five words.",
                       "inputs": ["input.record"], "route": "frontier"}]}
    script(fake, plan)
    cfg = config(fake.url, toolbox.url, tmp_path, step_max_tokens=16)
    cfg["engines"]["small"] = {"dialect": "llamacpp", "n_ctx": 1024}
    gw = start(tmp_path, cfg, PEOPLE)
    with gw.proc:
        r = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "summarise the record", "inputs": {"record": secret},
                                                          "sensitivity": "sensitive"})
        assert r.status_code == 201, r.text
        t = wait_state(gw, r.json()["id"], "succeeded", "failed", timeout=120)
    assert t["state"] == "succeeded", t
    step = t["steps"][-1]
    assert (step["route"], step["engine"], step["locality"]) == ("local", "small", "local")
    assert t["result"]
    sent = json.dumps(httpx.get(fake.url + "/__control/requests", timeout=5).json())
    assert "88-1234-77" not in sent and "Jane Roe" not in sent
    assert "fake-planner" in sent  # the planner was asked (without the record)


def test_cli_run_follow_approve_show(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    script(fake, TRIAGE)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path), PEOPLE)
    mail = tmp_path / "mail.txt"
    mail.write_text(MAIL["mail"])

    def cli(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "turnout", *args, "--url", gw.url, "--key", gw.token(who)],
                              capture_output=True, text=True, timeout=60)

    with gw.proc:
        out = cli("alice", "tasks", "run", "answer the mail", "--input-file", f"mail={mail}", "--input",
                  f"sender={MAIL['sender']}", "--tool", "send_email", "--follow")
        assert out.returncode == 0, out.stderr
        assert "waits for approval: turnout approvals approve gate_" in out.stdout
        gid = out.stdout.rsplit("approve ", 1)[1].split()[0]
        tid = out.stdout.split()[1]
        refused = cli("alice", "approvals", "approve", gid)
        assert refused.returncode == 2 and "403" in refused.stderr
        listed = cli("bob", "approvals", "list")
        assert gid in listed.stdout and "send_email" in listed.stdout
        assert cli("bob", "approvals", "approve", gid, "--reason", "ok").returncode == 0
        wait_state(gw, tid, "succeeded")
        shown = cli("alice", "tasks", "show", tid)
        assert shown.returncode == 0 and "succeeded" in shown.stdout and "send_email" in shown.stdout
        assert tid in cli("alice", "tasks", "list").stdout
        assert "already ended" in cli("alice", "tasks", "cancel", tid).stderr


def test_mcp_tools_stdio_and_streamable_http(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    """A real MCP server: search_tickets over stdio (read-only, never gated), create_ticket over
    streamable HTTP (irreversible, gated only when priority == urgent), the idempotency key
    passed as an argument."""
    pytest.importorskip("mcp")
    state = tmp_path / "tickets.json"
    server = start_server("turnout.testing.mcp_tickets", "--state", str(state), "--http", "--port", "0", add_port=False)
    mcp_tools = {
        "search_tickets": {"kind": "mcp", "command": [sys.executable, "-m", "turnout.testing.mcp_tickets", "--state",
                                                      str(state)], "effect": "read_only", "approval": "never"},
        "create_ticket": {"kind": "mcp", "url": server.url + "/mcp", "effect": "irreversible", "approval": "when",
                          "when": ["priority == urgent"], "idempotency_argument": "idempotency_key",
                          "parameters": {"type": "object", "required": ["title", "priority"]}},
    }
    plan = {"steps": [
        {"id": "found", "kind": "tool", "tool": "search_tickets", "arguments": {"query": "VAT"}},
        {"id": "open", "kind": "tool", "tool": "create_ticket", "reason": "no ticket yet",
         "arguments": {"title": "VAT wrong on INV-2291", "priority": "{{input.priority}}"}}], "result": "open"}
    script(fake, plan, plan)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path, tools=mcp_tools), PEOPLE)
    with server, gw.proc:
        calm = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": {"priority": "normal"},
                                                             "tools": ["search_tickets", "create_ticket"]}).json()["id"]
        t = wait_state(gw, calm, "succeeded", "failed", "awaiting_approval")
        assert t["state"] == "succeeded" and t["result"]["id"] == "T-1" and t["gates"] == [], t
        assert t["steps"][1]["result"] == {"tickets": []}
        urgent = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": {"priority": "urgent"},
                                                               "tools": ["search_tickets", "create_ticket"]}).json()["id"]
        wait_state(gw, urgent, "awaiting_approval")
        gate = gw.call("GET", "/v1/turnout/approvals", "bob").json()["data"][0]
        assert gate["why"] == "condition met: priority == urgent"
        gw.call("POST", f"/v1/turnout/approvals/{gate['id']}", "bob", {"decision": "approve"})
        t = wait_state(gw, urgent, "succeeded", "failed")
        assert t["state"] == "succeeded" and t["result"]["id"] == "T-2", t
        assert t["steps"][1]["result"]["tickets"][0]["id"] == "T-1"  # the stdio server read the HTTP server's ticket
    data = json.loads(state.read_text())
    created = [c for c in data["calls"] if c["tool"] == "create_ticket"]
    assert [c["idempotency_key"] for c in created] == [f"{calm}:1:open", f"{urgent}:1:open"]


def test_cancel_parked_task_and_refusals(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    script(fake, TRIAGE)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path), {**PEOPLE, "mallory": ("globex", "user")})
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL, "tools": ["send_email"]}).json()["id"]
        wait_state(gw, tid, "awaiting_approval")
        assert gw.call("POST", f"/v1/turnout/tasks/{tid}/cancel", "mallory").status_code == 404  # another tenant
        assert gw.call("POST", f"/v1/turnout/tasks/{tid}/cancel", "bob").status_code == 403      # an approver
        assert gw.call("GET", "/v1/turnout/tasks", "mallory").json()["data"] == []
        assert gw.call("POST", f"/v1/turnout/tasks/{tid}/cancel", "alice").status_code == 200
        t = wait_state(gw, tid, "cancelled")
        assert t["gates"][0]["state"] == "cancelled"
        assert gw.call("GET", "/v1/turnout/approvals", "bob").json()["data"] == []
        assert gw.call("POST", f"/v1/turnout/tasks/{tid}/cancel", "alice").status_code == 409
        assert gw.call("GET", f"/v1/turnout/tasks/{tid}", "bob").status_code == 200  # approvers read their tenant's
    assert httpx.get(toolbox.url + "/calls").json()["calls"] == []


@pytest.mark.slow
def test_worked_example_runs() -> None:
    """docs/tasks.md's worked example, as the README runs it (auto-approving)."""
    out = subprocess.run([sys.executable, "-m", "turnout.testing.tasks_demo", "--yes"], capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("succeeded") == 2 and "cached" in out.stdout
    assert "outbox: 2 mail(s) sent" in out.stdout


def test_approvals_page_in_headless_chromium(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    """The approver inbox page in a real browser: an approver of the tenant sees the gate, edits
    the arguments and approves; the task finishes with the edited mail. The starting key gets
    a 403 for the page; another tenant's approver sees an empty inbox."""
    import base64
    import shutil
    import tempfile

    from tests.test_dashboard import CHROMEDRIVER, CHROMIUM, _chromium_options

    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    script(fake, TRIAGE)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path), PEOPLE)
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL, "tools": ["send_email"]}).json()["id"]
        wait_state(gw, tid, "awaiting_approval")
        assert gw.call("GET", "/dashboard/approvals", "alice").status_code == 403
        page = httpx.get(gw.url + "/dashboard/approvals")
        assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
        os.environ.setdefault("SE_OFFLINE", "true")
        profile = tempfile.mkdtemp(prefix="turnout-chromium-")
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=_chromium_options(profile))

        def login(who: str) -> None:
            basic = base64.b64encode(f"{who}:{gw.token(who)}".encode()).decode()
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {basic}"}})
            driver.get(gw.url + "/dashboard/approvals")
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1"

        try:
            driver.set_page_load_timeout(30)
            driver.execute_cdp_cmd("Network.enable", {})
            login("eve")  # another tenant's approver
            assert driver.find_elements(By.CSS_SELECTOR, ".gate") == []
            assert driver.find_element(By.ID, "status").text == "nothing waiting"
            login("bob")
            cards = driver.find_elements(By.CSS_SELECTOR, ".gate")
            assert len(cards) == 1 and cards[0].find_element(By.TAG_NAME, "h2").text == "send_email"
            area = cards[0].find_element(By.TAG_NAME, "textarea")
            shown = json.loads(area.get_attribute("value"))
            assert shown["to"] == MAIL["sender"]
            edited = {**shown, "body": "Edited in the browser: we fix the VAT."}
            area.clear()
            area.send_keys(json.dumps(edited))
            cards[0].find_element(By.CSS_SELECTOR, "input.reason").send_keys("kinder wording")
            cards[0].find_element(By.CSS_SELECTOR, "button.approve").click()
            WebDriverWait(driver, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, ".gate").get_attribute(
                "data-state") == "approved")
            assert "arguments edited" in driver.find_element(By.CSS_SELECTOR, ".gate .result").text
            urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert urls and all(u.startswith(gw.url) for u in urls), urls
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
        t = wait_state(gw, tid, "succeeded", "failed")
    assert t["state"] == "succeeded" and t["gates"][0]["decision_reason"] == "kinder wording"
    assert httpx.get(toolbox.url + "/calls").json()["outbox"] == [edited]


def test_postgres_two_replicas_park_on_one_finish_on_the_other(tmp_path: Path, fake: Proc, toolbox: Proc,
                                                               pg_schema: str) -> None:
    """State in PostgreSQL (storage.postgres_dsn): the task parks on replica A, A is killed, the
    decision and the rest of the task happen on replica B."""
    from tests.conftest import PG_DSN

    script(fake, TRIAGE)
    cfg = config(fake.url, toolbox.url, tmp_path)
    cfg["storage"] = {**cfg["storage"], "postgres_dsn": PG_DSN, "postgres_schema": pg_schema}
    a = start(tmp_path, cfg, PEOPLE)
    b = Keyed(serve(a.config), a.config, a.keys)
    with b.proc:
        tid = a.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL, "tools": ["send_email"]}).json()["id"]
        wait_state(b, tid, "awaiting_approval")
        kill9(a.proc)
        gid = b.call("GET", "/v1/turnout/approvals", "bob").json()["data"][0]["id"]
        assert b.call("POST", f"/v1/turnout/approvals/{gid}", "alice", {"decision": "approve"}).status_code == 403
        assert b.call("POST", f"/v1/turnout/approvals/{gid}", "bob", {"decision": "approve"}).status_code == 200
        t = wait_state(b, tid, "succeeded", "failed")
    assert t["state"] == "succeeded", t
    assert len(httpx.get(toolbox.url + "/calls").json()["outbox"]) == 1
    assert len(planner_requests(fake)) == 1
    assert not (tmp_path / "turnout.sqlite").exists() or "tasks_tasks" not in str(
        sqlite3.connect(tmp_path / "turnout.sqlite").execute("SELECT name FROM sqlite_master").fetchall())


def test_failed_tool_step_replans_with_the_reason(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    broken = {"broken": {"url": toolbox.url + "/no_such_tool", "effect": "read_only", "approval": "never"}}
    first = {"steps": [{"id": "look", "kind": "tool", "tool": "broken", "arguments": {"q": "x"}}]}
    second = {"steps": [{"id": "look2", "kind": "tool", "tool": "search_tickets", "arguments": {"query": "VAT"}}]}
    script(fake, first, second)
    gw = start(tmp_path, config(fake.url, toolbox.url, tmp_path, tools=broken), PEOPLE)
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "tools": ["broken", "search_tickets"]}).json()["id"]
        t = wait_state(gw, tid, "succeeded", "failed")
    assert t["state"] == "succeeded" and t["replans"] == 1, t
    assert t["result"]["tickets"][0]["id"] == "T-1"
    assert "answered 404" in t["notes"][0]
    assert "answered 404" in json.dumps(planner_requests(fake)[1])  # the reason is in the planner's context


def test_tool_approvers_scope_who_may_decide(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    """`approvers` on a tool: only those approver keys of the tenant may decide its calls."""
    script(fake, TRIAGE)
    cfg = config(fake.url, toolbox.url, tmp_path)
    path = write_config(tmp_path, cfg)
    keys = {name: cli_key(path, tenant, "--roles", roles) for name, (tenant, roles) in
            {**PEOPLE, "dave": ("acme", "approver")}.items()}
    cfg["tasks"]["tools"]["send_email"]["approvers"] = [keys["dave"]["key_id"]]
    write_config(tmp_path, cfg)
    gw = Keyed(serve(path), path, keys)
    with gw.proc:
        tid = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "g", "inputs": MAIL, "tools": ["send_email"]}).json()["id"]
        wait_state(gw, tid, "awaiting_approval")
        gid = gw.call("GET", "/v1/turnout/approvals", "bob").json()["data"][0]["id"]
        r = gw.call("POST", f"/v1/turnout/approvals/{gid}", "bob", {"decision": "approve"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_an_approver_of_tool"
        assert gw.call("POST", f"/v1/turnout/approvals/{gid}", "dave", {"decision": "approve"}).status_code == 200
        assert wait_state(gw, tid, "succeeded", "failed")["state"] == "succeeded"
