"""The worked example of docs/tasks.md, end to end on this machine: triage a support mail.

It starts three real processes on loopback: the OpenAI-wire fake as the frontier planner
(scripted with the plan below: a fake, standing in for a paid API), the toolbox (an e-mail
outbox and a ticket system) and ``turnout serve`` with the embedded SmolLM2 as the local
executor, in ``auth: keys`` mode, with the default guards on, and two keys: a support agent
(``user``) who starts the task and a team lead (``approver``) who approves the reply. Then it starts the task, shows the
step the approver must decide, and waits for your decision (``turnout approvals approve|reject``
in another shell, as the lead; the command is printed). With ``--yes`` it approves at once and
runs the same mail a second time to show the step cache.

    python -m turnout.testing.tasks_demo [--mail FILE] [--yes] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from turnout.testing.procs import Proc, start_server

PLAN = {
    "steps": [
        {"id": "classify", "kind": "llm", "route": "local", "inputs": ["input.mail"],
         "instruction": "Classify this support mail as one word: billing, bug, account or other."},
        {"id": "summary", "kind": "llm", "route": "local", "inputs": ["input.mail"],
         "instruction": "Summarise the customer's request in one sentence."},
        {"id": "reply", "kind": "tool", "tool": "send_email",
         "reason": "acknowledge the mail and say what happens next",
         "arguments": {"to": "{{input.sender}}", "subject": "Re: {{input.subject}}",
                       "body": "Hello,\n\nthank you for your mail. We understood: {{steps.summary}}\n"
                               "Category: {{steps.classify}}. We will answer within one working day.\n\nSupport team"}},
    ],
    "result": "reply",
}


# goal/tool combinations of the worked example's tools (tests/test_tasks.py, bench/tasks_guards.py)
COMBOS = [
    ("Triage this support mail and acknowledge it to the customer.", ["send_email", "create_ticket", "search_tickets"]),
    ("Summarise the customer's complaint and open a ticket if it is urgent.", ["create_ticket"]),
    ("Find open tickets about this invoice and reply to the sender.", ["search_tickets", "send_email"]),
    ("Answer the customer's question about VAT.", ["send_email"]),
    ("Classify the mail and send a polite acknowledgement.", ["send_email"]),
    ("Draft a reply to this mail and send it after review.", ["send_email", "search_tickets"]),
    ("Look up related tickets and summarise them for the support lead.", ["search_tickets"]),
    ("Create an urgent ticket for this outage report and tell the customer.", ["create_ticket", "send_email"]),
    ("Summarise the mail in one sentence.", []),
    ("Check whether the customer already has an open ticket; if not, open one.", ["search_tickets", "create_ticket"]),
]

def config(planner_url: str, tools_url: str, db: Path) -> dict[str, Any]:
    email = {"type": "object", "required": ["to", "subject", "body"],
             "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}}}
    return {
        "auth": "keys",
        "engines": {
            "planner": {"dialect": "openai", "locality": "remote", "base_url": planner_url + "/v1",
                        "model": "fake-planner", "pricing": {"input_per_m": 2.5, "output_per_m": 10.0}},
            "smollm2": {"dialect": "llamacpp", "n_ctx": 2048, "pricing": {"hourly_cost": 0.5}},
        },
        "routes": {"frontier": {"chain": ["planner"]}, "local": {"chain": ["smollm2"]}},
        "storage": {"sqlite_path": str(db)},
        # the default guards, with a time budget for small, loaded machines: the first planner prompt (the mail, the
        # goal, the tools) is about 3,000 characters, which the PII model reads at ~190 ms per 1,000 characters on
        # one core here, past the default 250 ms + 40 ms per 1,000; a guard past its budget keeps a request local
        # (fail closed), and the planner route has no local engine
        "guards": {"budget_ms": 3000},
        "tasks": {
            "planner_route": "frontier", "executor_route": "local", "step_max_tokens": 48,
            "approval_deadline_s": 3600, "budget_usd": 0.05,
            "tools": {
                "send_email": {"url": tools_url + "/send_email", "effect": "irreversible", "approval": "always",
                               "description": "send an e-mail", "parameters": email},
                "create_ticket": {"url": tools_url + "/create_ticket", "effect": "irreversible", "approval": "when",
                                  "when": ["priority == urgent"], "description": "open a ticket",
                                  "parameters": {"type": "object", "required": ["title"]}},
                "search_tickets": {"url": tools_url + "/search_tickets", "effect": "read_only",
                                   "approval": "never", "description": "search open tickets", "cacheable": True},
            },
        },
    }


def key(cfg: Path, tenant: str, roles: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "turnout", "keys", "--config", str(cfg), "create", "--tenant", tenant,
                          "--roles", roles, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m turnout.testing.tasks_demo", description=__doc__.split("\n")[0])
    ap.add_argument("--mail", default=str(Path(__file__).resolve().parents[2] / "examples/tasks/mail-1.txt"))
    ap.add_argument("--sender", default="dana.weber@customer.example")
    ap.add_argument("--yes", action="store_true", help="approve at once instead of waiting for a person")
    ap.add_argument("--dir", default=None, help="where the config and the SQLite file go (default: a temp dir)")
    args = ap.parse_args(argv)
    work = Path(args.dir or tempfile.mkdtemp(prefix="turnout-tasks-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    mail = Path(args.mail).read_text(encoding="utf-8")

    procs: list[Proc] = []
    try:
        planner = start_server("turnout.testing.upstream", "--port", "0", "--model", "fake-planner", add_port=False)
        procs.append(planner)
        tools = start_server("turnout.testing.toolbox", "--port", "0", add_port=False)
        procs.append(tools)
        cfg_path = work / "turnout.yaml"
        cfg_path.write_text(yaml.safe_dump(config(planner.url, tools.url, work / "turnout.sqlite"), sort_keys=False))
        agent, lead = key(cfg_path, "support", "user"), key(cfg_path, "support", "approver")
        gw = start_server("turnout", "serve", "--config", str(cfg_path), timeout=180)
        procs.append(gw)
        httpx.post(planner.url + "/__control/scenarios", json={"replies": {"fake-planner": [json.dumps(PLAN)] * 2}})
        print(f"gateway {gw.url}; config {cfg_path}")
        print(f"agent key (user) {agent['key_id']}, lead key (approver) {lead['key_id']}\n")

        def as_(k: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
            r = httpx.request(method, gw.url + path, json=body, headers={"Authorization": f"Bearer {k['key']}"},
                              timeout=60)
            r.raise_for_status()
            return r.json()

        def wait(tid: str, *states: str) -> dict[str, Any]:
            while True:
                t: dict[str, Any] = as_(agent, "GET", f"/v1/turnout/tasks/{tid}")
                if t["state"] in states:
                    return t
                time.sleep(0.2)

        views = []
        for run in (1, 2) if args.yes else (1,):
            body = {"goal": "Triage this support mail and acknowledge it to the customer.",
                    "inputs": {"mail": mail, "sender": args.sender, "subject": "Invoice INV-2291 VAT"},
                    "tools": ["send_email", "create_ticket", "search_tickets"]}
            tid = as_(agent, "POST", "/v1/turnout/tasks", body)["id"]
            print(f"run {run}: task {tid} started by the agent")
            t = wait(tid, "awaiting_approval", "failed", "succeeded")
            if t["state"] == "awaiting_approval":
                gate = as_(lead, "GET", "/v1/turnout/approvals")["data"][0]
                print(f"  waiting for approval {gate['id']}: {gate['tool']} ({gate['reason']})")
                print("  " + json.dumps(gate["arguments"], indent=2).replace("\n", "\n  "))
                if args.yes:
                    as_(lead, "POST", f"/v1/turnout/approvals/{gate['id']}", {"decision": "approve", "reason": "demo"})
                else:
                    print(f"\n  decide as the lead, in another shell:\n    turnout approvals approve {gate['id']} "
                          f"--url {gw.url} --key {lead['key']}\n  (or: reject {gate['id']} --reason '...')\n")
                t = wait(tid, "failed", "succeeded", "cancelled")
            views.append(t)
            print(f"  {t['state']}: cost ${t['cost_usd']:.6f} of a ${t['budget_usd']:.2f} budget, saved by the "
                  f"step cache ${t['saved_usd']:.6f}")
            print(f"    {'step':<10} {'kind':<5} {'engine/tool':<14} {'where':<7} {'':<7} {'ends at':>8} "
                  f"{'took':>9} {'tokens':>7}  cost")
            for s in t["steps"]:
                tokens = s["prompt_tokens"] + s["completion_tokens"]
                print(f"    {s['step_id']:<10} {s['kind']:<5} {s['engine'] or s['route'] or '-':<14} "
                      f"{s['locality'] or '-':<7} {'cached' if s['cached'] else '':<7} "
                      f"{s['ts'] - t['created']:>7.2f}s {s['latency_ms'] or 0:>7.0f}ms {tokens:>7}  "
                      f"${s['cost_usd']:.6f}")
            if t["state"] != "succeeded":
                print(f"  error: {t['error']}")
        sent = httpx.get(tools.url + "/calls").json()["outbox"]
        print(f"\noutbox: {len(sent)} mail(s) sent")
        for m in sent:
            print("  to", m["to"], "|", m["subject"], "|", m["body"].replace("\n", " ")[:160])
        return 0 if all(v["state"] == "succeeded" for v in views) else 1
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
