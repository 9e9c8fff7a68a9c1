"""What the default guards say of a task's planner prompt (issue 23, H4), for ten goal/tool
combinations of the worked example's tools and mail: the injection finding on the prompt as one
message (the gateway's template with the goal inside, as turnout sent it before) and on what
the user supplied (the goal, the inputs' names and sizes: the messages inspected now), and the
time one inspection of the template takes against its default budget.

    python bench/tasks_guards.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from turnout.guards.scanner import Scanner
from turnout.tasks import plan as planmod
from turnout.tasks.runner import EXECUTOR_SYSTEM, PLANNER_SYSTEM
from turnout.testing import tasks_demo
from turnout.testing.tasks_demo import COMBOS


def old_prompt(goal: str, inputs: dict[str, str], tools: dict[str, dict[str, Any]], routes: list[str]) -> str:
    """The planner prompt as turnout built it before issue 23 (one message, the goal inside)."""
    lines = ["Plan the steps of this task. Answer with one JSON object matching this schema:", planmod.schema_text(),
             "", f"Goal: {goal}", "Inputs (refer to them as input.NAME; you do not see their text):"]
    lines += [f"- {k}: {len(v)} characters" for k, v in inputs.items()] or ["- (none)"]
    lines.append("Tools (kind 'tool'):")
    lines += [f"- {n} ({t['effect']}): {t['description']} arguments schema: {orjson.dumps(t['parameters']).decode()}"
              for n, t in tools.items()] or ["- (none)"]
    lines.append(f"Executor routes for llm steps: {', '.join(routes)}")
    return "\n".join(lines)


def verdict(scanner: Scanner, texts: list[str]) -> str:
    found = [f for _, f in scanner.inspect_messages(texts).findings if f.kind == "injection"]
    return ", ".join(f"{f.type} {f.score:.2f}" for f in found) or "-"


def main() -> None:
    scanner = Scanner.default(budget_ms=60_000)  # no budget here: we time it ourselves
    cfg = tasks_demo.config("http://planner", "http://tools", Path("/tmp/unused.sqlite"))["tasks"]["tools"]
    tools = {n: {"effect": t["effect"], "description": t["description"], "parameters": t.get("parameters", {})}
             for n, t in cfg.items()}
    mail = (Path(__file__).resolve().parents[1] / "examples/tasks/mail-1.txt").read_text(encoding="utf-8")
    inputs = {"mail": mail, "sender": "dana.weber@customer.example", "subject": "Invoice INV-2291 VAT"}
    routes = ["frontier", "local"]
    refused_before = refused_now = 0
    print(f"{'goal':<45} {'tools':>5}  {'one message (before)':<22} {'user-supplied (now)':<20}")
    for goal, names in COMBOS:
        described = {n: tools[n] for n in names}
        template = planmod.planner_prompt(described, routes, [], inputs=True, reasons=False)
        supplied = planmod.supplied(goal, inputs, [])
        before = verdict(scanner, [PLANNER_SYSTEM, old_prompt(goal, inputs, described, routes)])
        now = verdict(scanner, supplied)
        refused_before += "JAILBREAK" in before
        refused_now += "JAILBREAK" in now
        print(f"{goal[:45]:<45} {len(names):>5}  {before:<22} {now:<20}")
    print(f"refused (JAILBREAK blocks by default): before {refused_before}/{len(COMBOS)}, now {refused_now}/"
          f"{len(COMBOS)}; the executor's system prompt alone: {verdict(scanner, [EXECUTOR_SYSTEM])}")
    template = planmod.planner_prompt(tools, routes, [], inputs=True, reasons=False)
    texts = [PLANNER_SYSTEM, template, *planmod.supplied(COMBOS[0][0], inputs, [])]
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        scanner.inspect_messages(texts)
        times.append((time.perf_counter() - t0) * 1000)
    budget = Scanner([], budget_ms=250.0).budget_for(texts)  # the default: 250 ms + 40 ms per 1,000 characters
    print(f"planner call, {sum(map(len, texts))} characters (template {len(template)}): one inspection took "
          f"median {statistics.median(times):.0f} ms, max {max(times):.0f} ms; default budget {budget:.0f} ms")


if __name__ == "__main__":
    main()
