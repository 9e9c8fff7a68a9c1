"""`turnout tasks` and `turnout approvals`: clients of a running gateway's task API.

    turnout tasks run "GOAL" [--input NAME=TEXT] [--input-file NAME=PATH] [--tool T]... [--sensitive]
                      [--budget USD] [--follow]
    turnout tasks list | show TASK_ID | cancel TASK_ID
    turnout approvals list
    turnout approvals approve GATE_ID [--reason TEXT] [--arguments JSON]
    turnout approvals reject GATE_ID --reason TEXT

The gateway is --url (default $TURNOUT_URL, else http://127.0.0.1:8000); the key is --key
(default $TURNOUT_API_KEY). Starting tasks needs a `user` key; approving needs an `approver`
key of the same tenant that is not the key that started the task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("TURNOUT_URL", "http://127.0.0.1:8000"))
    p.add_argument("--key", default=os.environ.get("TURNOUT_API_KEY"), help="API key (default $TURNOUT_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the JSON answer")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fmt = argparse.RawDescriptionHelpFormatter
    t = sub.add_parser("tasks", help="start, follow, list and cancel tasks (docs/tasks.md)", description=__doc__,
                       formatter_class=fmt)
    ts = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = ts.add_parser("run", help="start a task")
    run.add_argument("goal")
    run.add_argument("--input", action="append", default=[], metavar="NAME=TEXT")
    run.add_argument("--input-file", action="append", default=[], metavar="NAME=PATH")
    run.add_argument("--tool", action="append", default=[], help="a tool the task may use (repeat)")
    run.add_argument("--sensitive", action="store_true",
                     help="every model call, the plan's too, stays on local engines")
    run.add_argument("--budget", type=float, metavar="USD",
                     help="the task's spending limit (default: tasks.budget_usd)")
    run.add_argument("--follow", action="store_true", help="print progress until the task ends or waits for approval")
    _common(run)
    run.set_defaults(func=run_task)
    for name, fn in (("list", list_tasks), ("show", show_task), ("cancel", cancel_task)):
        p = ts.add_parser(name, help=f"{name} task(s)")
        if name != "list":
            p.add_argument("task_id")
        _common(p)
        p.set_defaults(func=fn)

    a = sub.add_parser("approvals", help="the approver inbox: list, approve, reject", description=__doc__,
                       formatter_class=fmt)
    acts = a.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = acts.add_parser("list", help="pending approvals of your tenant")
    ls.add_argument("--all", action="store_true", help="decided ones too")
    _common(ls)
    ls.set_defaults(func=list_approvals)
    for name in ("approve", "reject"):
        p = acts.add_parser(name, help=f"{name} a gated tool call")
        p.add_argument("gate_id")
        p.add_argument("--reason", required=name == "reject", help="the planner reads it when re-planning")
        if name == "approve":
            p.add_argument("--arguments", help="other arguments (a JSON object) are an edit, which waits for another "
                                                "approver; an edited call is approved with its edited arguments")
        _common(p)
        p.set_defaults(func=decide, decision=name)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    r = httpx.request(method, args.url.rstrip("/") + path, json=body, headers=headers, timeout=30)
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:300]
        raise ValueError(f"{method} {path}: {r.status_code} {msg}")
    return r.json()


def _pairs(items: list[str], files: bool) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME={'PATH' if files else 'TEXT'}, got {item!r}")
        out[name] = Path(value).read_text(encoding="utf-8") if files else value
    return out


def run_task(args: argparse.Namespace) -> int:
    inputs = {**_pairs(args.input, False), **_pairs(args.input_file, True)}
    body: dict[str, Any] = {"goal": args.goal, "inputs": inputs, "tools": args.tool}
    if args.sensitive:
        body["sensitivity"] = "sensitive"
    if args.budget is not None:
        body["budget_usd"] = args.budget
    made = _call(args, "POST", "/v1/turnout/tasks", body)
    print(json.dumps(made) if args.json else f"task {made['id']} queued")
    if args.follow:
        return follow(args, made["id"])
    return 0


def follow(args: argparse.Namespace, tid: str) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    with httpx.stream("GET", f"{args.url.rstrip('/')}/v1/turnout/tasks/{tid}/events", headers=headers,
                      timeout=None) as s:
        for line in s.iter_lines():
            if not line.startswith("data: "):
                continue
            e = json.loads(line[6:])
            if "kind" not in e:
                break
            d = e.get("data") or {}
            print(f"  {e['kind']:<18} " + ", ".join(f"{k}={v}" for k, v in d.items() if k != "plan"))
            if e["kind"] == "awaiting_approval":
                print(f"task {tid} waits for approval: turnout approvals approve {d['gate']}")
                return 0
    return show_task(argparse.Namespace(**{**vars(args), "task_id": tid}))


def list_tasks(args: argparse.Namespace) -> int:
    rows = _call(args, "GET", "/v1/turnout/tasks")["data"]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['id']}  {r['state']:<18} ${r['cost_usd']:.6f}  {r['goal'][:60]}")
    return 0


def show_task(args: argparse.Namespace) -> int:
    t = _call(args, "GET", f"/v1/turnout/tasks/{args.task_id}")
    if args.json:
        print(json.dumps(t, indent=2))
        return 0
    budget = f" of ${t['budget_usd']:.6f}" if t.get("budget_usd") is not None else ""
    print(f"task {t['id']}: {t['state']}  cost ${t['cost_usd']:.6f}{budget} (saved by the step cache "
          f"${t['saved_usd']:.6f}), {t['tokens']} tokens, plan v{t['plan_version']}, re-plans {t['replans']}")
    if t.get("local_only"):
        print(f"  every model call local: {t['local_only']}")
    for s in t["steps"]:
        where = (f"{s['route'] or ''}/{s['engine'] or '-'}({s['locality'] or '-'})" if s["kind"] != "tool"
                 else s["route"])
        cached = " cached" if s["cached"] else ""
        print(f"  v{s['plan_version']} {s['step_id']:<14} {s['kind']:<5} {s['status']:<9} {where} "
              f"${s['cost_usd']:.6f}{cached} {(s['latency_ms'] or 0):.0f} ms")
    for g in t["gates"]:
        print(f"  gate {g['id']} {g['tool']} {g['state']} by {g['decided_by'] or '-'}")
    if t["error"]:
        print(f"error ({t.get('failure') or 'failed'}): {t['error']}")
    if t["result"] is not None:
        print("result:", t["result"] if isinstance(t["result"], str) else json.dumps(t["result"]))
    return 0 if t["state"] != "failed" else 1


def cancel_task(args: argparse.Namespace) -> int:
    _call(args, "POST", f"/v1/turnout/tasks/{args.task_id}/cancel")
    print(f"task {args.task_id}: cancel requested")
    return 0


def list_approvals(args: argparse.Namespace) -> int:
    rows = _call(args, "GET", "/v1/turnout/approvals" + ("?state=all" if args.all else ""))["data"]
    if args.json:
        print(json.dumps(rows))
        return 0
    for g in rows:
        print(f"{g['id']}  {g['state']:<9} task {g['task_id']}  {g['tool']} {json.dumps(g['arguments'])}")
        print(f"      why: {g['reason'] or '-'} ({g['why']})")
    if not rows:
        print("no approvals waiting", file=sys.stderr)
    return 0


def decide(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"decision": args.decision, "reason": args.reason}
    if getattr(args, "arguments", None):
        body["arguments"] = json.loads(args.arguments)
    out = _call(args, "POST", f"/v1/turnout/approvals/{args.gate_id}", body)
    waits = " (edited: waits for another approver)" if out["state"] == "pending" else ""
    print(json.dumps(out) if args.json else f"{args.gate_id}: {out['state']}{waits}")
    return 0
