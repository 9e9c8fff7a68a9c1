"""The plan a planner returns: JSON checked against :class:`Plan` (its JSON schema is in the
planner's prompt), then against the task (references to earlier steps only, tools the task
may use, routes that exist).

    {"steps": [
      {"id": "classify", "kind": "llm", "instruction": "Classify this mail: billing, bug or other.",
       "inputs": ["input.mail"]},
      {"id": "reply", "kind": "tool", "tool": "send_email", "reason": "answer the customer",
       "arguments": {"to": "{{input.sender}}", "body": "{{steps.classify}}"}}],
     "result": "reply"}

``llm`` steps run on an executor route (the plan's ``route``, else ``tasks.executor_route``);
``tool`` steps call a tool of ``turnout.yaml``. ``{{input.NAME}}`` and ``{{steps.ID}}`` in
instructions and string arguments are replaced by the input or an earlier step's result.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

REF = re.compile(r"\{\{\s*(input|steps)\.([A-Za-z0-9_\-]+)\s*\}\}")


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,40}$")
    kind: Literal["llm", "tool"]
    instruction: str | None = Field(None, description="llm: what to do with the inputs")
    inputs: list[str] = Field(default_factory=list, description="llm: 'input.NAME' or 'steps.ID' (earlier steps)")
    route: str | None = Field(None, description="llm: the executor route (default: the configured one)")
    tool: str | None = Field(None, description="tool: its name")
    arguments: dict[str, Any] = Field(default_factory=dict, description="tool: may hold {{input.X}} / {{steps.ID}}")
    reason: str | None = Field(None, description="why this step (shown to the approver)")


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(min_length=1)
    result: str | None = Field(None, description="the step whose result is the task's (default: the last)")


class PlanError(ValueError):
    pass


def schema_text() -> str:
    return orjson.dumps(Plan.model_json_schema()).decode()


def _json_of(text: str) -> Any:
    """The JSON object in a model's answer (a fenced block or the outermost braces)."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.S)
    body = fenced.group(1) if fenced else text[text.find("{"): text.rfind("}") + 1]
    if not body:
        raise PlanError("the answer holds no JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PlanError(f"the plan is not valid JSON: {exc}") from None


def parse_plan(text: str, inputs: set[str], tools: set[str], routes: set[str], max_steps: int) -> Plan:
    """A checked plan, or PlanError saying what is wrong (the planner reads it when repairing)."""
    try:
        plan = Plan.model_validate(_json_of(text))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:8])
        raise PlanError(f"the plan does not match the schema: {problems}") from None
    if len(plan.steps) > max_steps:
        raise PlanError(f"the plan has {len(plan.steps)} steps; at most {max_steps}")
    seen: set[str] = set()
    for s in plan.steps:
        if s.id in seen:
            raise PlanError(f"step id {s.id!r} is used twice")
        refs = [tuple(r.split(".", 1)) for r in s.inputs]
        texts = [s.instruction or "", *_strings(s.arguments)]
        refs += [(m.group(1), m.group(2)) for t in texts for m in REF.finditer(t)]
        for ref in refs:
            if len(ref) != 2 or ref[0] not in ("input", "steps"):
                raise PlanError(f"step {s.id}: reference {'.'.join(ref)!r} is not input.NAME or steps.ID")
            kind, name = ref
            if kind == "input" and name not in inputs:
                raise PlanError(f"step {s.id}: no input named {name!r}; inputs are {sorted(inputs)}")
            if kind == "steps" and name not in seen:
                raise PlanError(f"step {s.id}: steps.{name} is not an earlier step")
        if s.kind == "llm" and not s.instruction:
            raise PlanError(f"step {s.id}: an llm step needs an instruction")
        if s.kind == "llm" and s.route is not None and s.route not in routes:
            raise PlanError(f"step {s.id}: no route {s.route!r}; routes are {sorted(routes)}")
        if s.kind == "tool" and s.tool not in tools:
            raise PlanError(f"step {s.id}: tool {s.tool!r} is not one this task may use ({sorted(tools)})")
        seen.add(s.id)
    if plan.result is not None and plan.result not in seen:
        raise PlanError(f"result names no step: {plan.result!r}")
    return plan


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def fill(obj: Any, inputs: dict[str, Any], results: dict[str, Any]) -> Any:
    """``obj`` with every reference replaced; a string that is one whole reference takes the
    referenced value as it is (an object stays an object)."""
    if isinstance(obj, str):
        whole = REF.fullmatch(obj.strip())
        if whole:
            return (inputs if whole.group(1) == "input" else results)[whole.group(2)]
        return REF.sub(lambda m: as_text((inputs if m.group(1) == "input" else results)[m.group(2)]), obj)
    if isinstance(obj, dict):
        return {k: fill(v, inputs, results) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fill(v, inputs, results) for v in obj]
    return obj


def planner_prompt(tools: dict[str, dict[str, Any]], routes: list[str], notes: list[str], *, inputs: bool,
                   reasons: bool) -> str:
    """The gateway's part of the planner's prompt: the plan's schema, the tools the operator
    described in ``turnout.yaml``, the routes and what went wrong before (``notes``: made of step
    ids, tool names, statuses and schema paths, never of a task's values). What others wrote —
    the goal, the inputs' names, the approvers' reasons, and the tools of MCP servers (their
    schemas and descriptions are the servers') — comes in messages of its own (:func:`supplied`,
    in the order this template announces), so the guards inspect those and not this template."""
    lines = ["Plan the steps of this task. Answer with one JSON object matching this schema:", schema_text(), "",
             "Tools (kind 'tool'):"]
    lines += [f"- {n} ({t['effect']}): {t['description']} arguments schema: {orjson.dumps(t['parameters']).decode()}"
              for n, t in tools.items() if not t.get("server")] or ["- (none)"]
    lines.append(f"Executor routes for llm steps: {', '.join(routes)}")
    if notes:
        lines += ["", "Earlier attempts (plan around them):", *[f"- {n}" for n in notes]]
    lines += ["", "The messages after this one give, in this order:", "- the task's goal, as its author wrote it;"]
    if inputs:
        lines.append("- the task's inputs: a JSON object of each input's name and its size in characters (refer to "
                     "them as input.NAME; you never see their text);")
    if any(t.get("server") for t in tools.values()):
        lines.append("- more tools (kind 'tool'), as their MCP servers describe them: a JSON object of each tool's "
                     "name, effect, description and arguments schema;")
    if reasons:
        lines.append("- the reasons the approvers wrote when they rejected earlier calls.")
    if not inputs:
        lines.append("The task has no inputs.")
    return "\n".join(lines)


def supplied(goal: str, inputs: dict[str, Any], reasons: list[str],
             tools: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The planner's messages made of what others wrote: the goal, the inputs' names with
    their sizes (never their values: a sensitive input is never sent to a remote planner), the
    tools of MCP servers as their servers describe them, and the approvers' reasons. The guards
    inspect them as user input: an injection is refused."""
    out = [goal]
    if inputs:
        out.append(orjson.dumps({k: len(as_text(v)) for k, v in inputs.items()}).decode())
    served = {n: {k: t[k] for k in ("effect", "description", "parameters")}
              for n, t in (tools or {}).items() if t.get("server")}
    if served:
        out.append(orjson.dumps(served).decode())
    if reasons:
        out.append("\n".join(f"- {r}" for r in reasons))
    return out


QUOTE_WORDS = 6  # a reason repeating this many words of the task's data in a row quotes it
_WORD = re.compile(r"\w+")


def quotes(text: str, data: list[str]) -> bool:
    """Whether ``text`` (an approver's reason) repeats part of ``data`` (the task's inputs, step
    results and arguments): a word of four or more characters that is not an ordinary dictionary
    word (a name, a number, an address, an identifier, or a piece of one) and occurs in the data,
    or ``QUOTE_WORDS`` words in a row as the data has them; case ignored. Such a reason is
    withheld from the planner: a person who read the arguments may quote them."""
    from turnout.guards.pii_lexicon import lexicon

    english, names = lexicon("english_words"), lexicon("names")
    blob = "\x00".join(d.casefold() for d in data)
    said = _WORD.findall(text)
    for w in said:
        plain = w.isalpha() and w.casefold() in english and w.title() not in names
        if len(w) >= 4 and not plain and w.casefold() in blob:
            return True
    words = " \x00 ".join(" ".join(_WORD.findall(d.casefold())) for d in data)
    runs = (" ".join(said[i:i + QUOTE_WORDS]).casefold() for i in range(len(said) - QUOTE_WORDS + 1))
    return any(f" {r} " in f" {words} " for r in runs)
