"""Tool calling for the embedded engine: OpenAI ``tools`` / ``tool_choice`` on a chat-template model.

SmolLM2's chat template is plain ChatML with no tool format. The SmolLM2 family was tuned on
function calling written as a JSON list between ``<tool_call>`` tags (Ollama's smollm2 template
uses the same convention), so that is what the model is shown and asked for:

- **prompt** (``template_messages``): the declared functions go into the system message as
  ``<tools>[...]</tools>`` with the call format; assistant turns that called tools are written
  ``<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>``; tool results become a user turn
  of ``<tool_response>`` blocks. The model's own chat template then renders the turns.
- **grammar** (``grammar_for``): llama-cpp-python's ``SchemaConverter`` (the code behind
  ``LlamaGrammar.from_json_schema``) turns each function's ``parameters`` into GBNF rules; one
  call is ``{"name": "<declared name>", "arguments": <schema rule>}``. ``required``: root is a
  list of 1..n calls; a named function: exactly one call of it; ``auto``: root is the call list
  *or* free text that does not begin with ``<`` (so the model's first token decides); ``none``:
  no grammar and no tool list in the prompt (plain text).
- **reading** (``CallScanner``): the constrained answer is framed by the grammar, so the scanner
  only tracks where each call's name ends and where its arguments object closes, and emits
  OpenAI ``tool_calls`` deltas (index, id, name, then argument fragments) as tokens arrive.

llama.cpp's lazy grammars (triggered by a pattern, as llama.cpp's own server does for tools)
are not reachable through ``create_chat_completion``; the ``auto`` alternative is the
nearest equivalent. Schema keywords the converter ignores (numeric bounds, for one) are not
enforced; a schema it cannot convert falls back to "any JSON object", as llama-cpp-python's
own handlers do.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from turnout.protocol import ChatMessage, ChatRequest

log = logging.getLogger("turnout.engines.llamacpp")

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 4  # calls in one answer when parallel_tool_calls is not false

_INSTRUCTIONS = {
    "auto": "If a function helps to answer, call it; otherwise answer in plain text.",
    "required": "You must call at least one of the functions.",
    "named": "You must call the function {name}.",
}


@dataclass(slots=True)
class ToolPlan:
    """What a request asks of the tools: ``mode`` is none, auto, required or named."""

    mode: str
    functions: list[dict[str, Any]]
    name: str | None = None
    max_calls: int = 1

    @property
    def constrained(self) -> bool:
        return self.mode != "none"

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "named")


def plan(req: ChatRequest) -> ToolPlan | None:
    """The request's tool plan, or None when it declares no function tools."""
    functions = [t["function"] for t in req.tools or () if t.get("type") == "function" and t.get("function")]
    if not functions:
        return None
    choice = req.tool_choice
    parallel = req.parallel_tool_calls is not False
    if isinstance(choice, dict):
        return ToolPlan("named", functions, name=choice["function"]["name"], max_calls=1)
    mode = choice if choice in ("none", "required") else "auto"
    return ToolPlan(mode, functions, max_calls=MAX_PARALLEL_CALLS if parallel else 1)


# ---- prompt -------------------------------------------------------------------------------

def template_messages(messages: list[ChatMessage], tools: ToolPlan | None) -> list[dict[str, Any]]:
    """The conversation as a plain chat template takes it: text content always present, tool
    calls and tool results written in the ``<tool_call>`` / ``<tool_response>`` convention,
    and the tool list in the system message when the model may call one."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, to label results
    for m in messages:
        if m.role in ("tool", "function"):
            name = m.name or names.get(m.tool_call_id or "", "")
            result = json.dumps({"name": name, "content": _maybe_json(m.text())}, ensure_ascii=False)
            block = f"<tool_response>\n{result}\n</tool_response>"
            if out and out[-1].get("_results"):  # consecutive results: one user turn
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_results": True})
            continue
        role = "system" if m.role == "developer" else m.role
        text = m.text()
        if m.role == "assistant" and m.tool_calls:
            calls = [_call_of(c, names) for c in m.tool_calls]
            text = (text.strip() + "\n" if text.strip() else "") + render_calls(calls)
        out.append({"role": role, "content": text.strip()})
    for turn in out:
        turn.pop("_results", None)
    if tools is not None and tools.constrained:
        block = tools_block(tools)
        if out and out[0]["role"] == "system":
            out[0]["content"] = (out[0]["content"] + "\n\n" + block).strip()
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def tools_block(tools: ToolPlan) -> str:
    listed = [{k: f[k] for k in ("name", "description", "parameters") if k in f} for f in tools.functions]
    rule = _INSTRUCTIONS[tools.mode].format(name=tools.name)
    return (
        "You can call functions. The functions you may call, with JSON schemas of their arguments:\n"
        f"<tools>{json.dumps(listed, ensure_ascii=False)}</tools>\n"
        f"To call functions, write only a JSON list of calls between {OPEN} and {CLOSE}, for example:\n"
        f'{OPEN}[\n{{"name": "function_name", "arguments": {{"argument": "value"}}}}\n]{CLOSE}\n'
        f"Results come back between <tool_response> tags. {rule}"
    )


def render_calls(calls: list[tuple[str, Any]]) -> str:
    """``[(name, arguments)]`` in exactly the form the grammar makes the model write."""
    body = ",\n".join(_call_text(name, args) for name, args in calls)
    return f"{OPEN}[\n{body}\n]{CLOSE}"


def _call_text(name: str, args: Any) -> str:
    return '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": ' + \
        json.dumps(args, ensure_ascii=False) + "}"


def _call_of(call: Any, names: dict[str, str]) -> tuple[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    fn = fn if isinstance(fn, dict) else {}
    name = str(fn.get("name") or "")
    if isinstance(call, dict) and call.get("id"):
        names[str(call["id"])] = name
    return name, _maybe_json(fn.get("arguments"))


def _maybe_json(value: Any) -> Any:
    """A JSON text as its value (arguments and results usually are JSON); anything else as is."""
    if not isinstance(value, str):
        return {} if value is None else value
    try:
        return json.loads(value)
    except ValueError:
        return value


# ---- grammar ------------------------------------------------------------------------------

def grammar_for(tools: ToolPlan, json_text: bool = False, any_arguments: bool = False) -> str:
    """GBNF for the plan's answer (see the module docstring); ``json_text``: in ``auto``, the
    text alternative is a JSON object (``response_format: json_object``); ``any_arguments``:
    every function takes any JSON object (the fallback when llama.cpp rejects the grammar)."""
    from llama_cpp.llama_grammar import SchemaConverter

    conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    chosen = [f for f in tools.functions if tools.mode != "named" or f.get("name") == tools.name]
    alts = []
    for i, fn in enumerate(chosen):
        schema = {"type": "object"} if any_arguments else _arguments_schema(fn)
        args = conv.visit(conv.resolve_refs(schema, f"tool{i}"), f"tool{i}-args")
        head = '{"name": ' + json.dumps(fn["name"]) + ', "arguments": '
        alts.append(f"{_literal(head)} {args} {_literal('}')}")
    calls = "call" if tools.max_calls == 1 else f'call ("," "\\n"? call){{0,{tools.max_calls - 1}}}'
    lines = [
        f'tool-calls ::= {_literal(OPEN + "[")} "\\n"? {calls} "\\n"? {_literal("]" + CLOSE)}',
        "call ::= " + " | ".join(f"({a})" for a in alts),
    ]
    if tools.mode == "auto":
        if json_text:
            lines.append(f"root ::= tool-calls | {conv.visit({'type': 'object'}, 'json-answer')}")
        else:
            lines += ["root ::= tool-calls | text", "text ::= [^<] [^\\x00]*"]
    else:
        lines.append("root ::= tool-calls")
    rules: str = conv.format_grammar()
    return "\n".join(lines) + "\n" + rules + "\n"


def _arguments_schema(fn: dict[str, Any]) -> dict[str, Any]:
    """The function's parameters schema, if the converter can make a grammar of it and it
    describes a JSON object; else any JSON object (as llama-cpp-python's handlers fall back)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = fn.get("parameters")
    if schema is None:
        return {"type": "object", "properties": {}}  # OpenAI: no parameters means an empty list
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        return {"type": "object"}
    try:
        json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter asserts on what it does not know
        log.warning("tool %r: parameters schema not convertible to a grammar (%s); any JSON object allowed",
                    fn.get("name"), exc)
        return {"type": "object"}
    return schema


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ---- reading the answer --------------------------------------------------------------------

@dataclass(slots=True)
class CallScanner:
    """Turns the grammar-constrained answer, fed as it streams, into text and OpenAI
    ``tool_calls`` deltas. In ``auto`` the first character tells the branch: ``<`` opens the
    call list (the text alternative cannot start with it), anything else is text."""

    mode: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    _state: str = ""
    _buf: str = ""
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False

    def __post_init__(self) -> None:
        self._state = "start" if self.mode == "auto" else "open"

    @property
    def called(self) -> bool:
        """Whether the answer is a list of tool calls (whole or cut short)."""
        return bool(self.calls)

    @property
    def complete(self) -> bool:
        """Whether the call list was closed (not cut by max_tokens or a stop string)."""
        return self._state == "done"

    def feed(self, piece: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(text for the client, tool-call deltas) for one piece of generated text."""
        text: list[str] = []
        deltas: list[dict[str, Any]] = []
        args: list[str] = []

        def flush_args() -> None:
            if args:
                i = len(self.calls) - 1
                fragment = "".join(args)
                self.calls[i]["function"]["arguments"] += fragment
                if deltas and deltas[-1]["index"] == i:  # one entry per call and chunk, as OpenAI sends
                    deltas[-1]["function"]["arguments"] += fragment
                else:
                    deltas.append({"index": i, "function": {"arguments": fragment}})
                args.clear()

        for ch in piece:
            s = self._state
            if s == "start":
                self._state = "open" if ch == "<" else "text"
                s = self._state
            if s == "text":
                text.append(ch)
            elif s == "open":
                self._buf += ch
                if self._buf.endswith(OPEN + "["):
                    self._state, self._buf = "between", ""
            elif s == "between":
                if ch == "{":
                    self._state, self._buf = "head", ch
                elif ch == "]":
                    self._state = "done"
            elif s == "head":
                self._buf += ch
                if self._buf.endswith('"arguments": '):
                    name = json.loads(self._buf + "null}")["name"]
                    call_id = new_call_id()
                    self.calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}})
                    deltas.append({"index": len(self.calls) - 1, "id": call_id, "type": "function",
                                   "function": {"name": name, "arguments": ""}})
                    self._state, self._depth, self._in_string, self._escaped = "args", 0, False, False
            elif s == "args":
                if self._depth == 0 and ch.isspace():
                    continue
                args.append(ch)
                if self._in_string:
                    if self._escaped:
                        self._escaped = False
                    elif ch == "\\":
                        self._escaped = True
                    elif ch == '"':
                        self._in_string = False
                elif ch == '"':
                    self._in_string = True
                elif ch in "{[":
                    self._depth += 1
                elif ch in "}]":
                    self._depth -= 1
                    if self._depth == 0:
                        flush_args()
                        self._state = "after"
            elif s == "after" and ch == "}":
                self._state = "between"
        flush_args()
        return ("".join(text) or None), deltas


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")[:24]


def merge_tool_deltas(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed ``tool_calls`` deltas (by index) as whole OpenAI tool calls."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        i = int(d.get("index", 0))
        call = calls.setdefault(i, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if d.get("id"):
            call["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] = fn["name"]
        call["function"]["arguments"] += fn.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]
