"""Judging an answer: valid JSON of the output schema, then each declared check.

``problem(fn, answer, variables)`` returns None for a valid answer, else why it is not (one
line, recorded in the ledger and used as the escalation reason). A JSON answer may come
wrapped in a Markdown code fence (```json ... ```), as chat models often write it; anything
else around the JSON makes it invalid.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from turnout.config import ConfigError

if TYPE_CHECKING:
    from turnout.functions.spec import CheckSpec, Function

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
_MISSING = object()


class FunctionError(ConfigError):
    """A function folder that does not load; the message names the file and line."""


def parse_json(answer: str) -> Any:
    """The JSON value of an answer (inside a code fence or bare); ValueError if there is none."""
    m = _FENCE.match(answer)
    return json.loads(m.group(1) if m else answer)


def pointer(doc: Any, ptr: str) -> Any:
    """RFC 6901 JSON pointer lookup; ``_MISSING`` when the path does not exist."""
    if ptr in ("", "/"):
        return doc
    for raw in ptr.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
    return doc


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _check(c: CheckSpec, i: int, answer: str, parsed: Any, variables: dict[str, Any]) -> str | None:
    label = c.name or f"checks[{i}]"
    if c.field is not None:
        if parsed is _MISSING:
            try:
                parsed = parse_json(answer)
            except ValueError:
                return f"{label}: the answer is not JSON, so {c.field} cannot be read"
        value = pointer(parsed, c.field)
        if value is _MISSING:
            return f"{label}: {c.field} is missing"
    else:
        value = answer
    if value is None:  # an explicit null passes: "not found" is an answer
        return None
    if c.regex is not None and re.search(c.regex, _text(value)) is None:
        return f"{label}: {c.field or 'the answer'} {_text(value)[:80]!r} does not match /{c.regex}/"
    if c.in_input is not None:
        source = _text(variables.get(c.in_input, ""))
        if _text(value).casefold() not in source.casefold():
            return (f"{label}: {c.field or 'the answer'} {_text(value)[:80]!r} "
                    f"does not occur in the input {c.in_input!r}")
    return None


def problem(fn: Function, answer: str | None, variables: dict[str, Any]) -> str | None:
    """None when the answer passes the output schema and every check; else the first reason."""
    if answer is None:
        return "no text answer"
    parsed: Any = _MISSING
    if fn.output_schema is not None:
        try:
            parsed = parse_json(answer)
        except ValueError as exc:
            return f"not JSON ({exc}): {answer.strip()[:60]!r}"
        errors = list(fn.validator("output").iter_errors(parsed))
        if errors:
            e = errors[0]
            where = "/" + "/".join(map(str, e.instance_path)) if e.instance_path else "the answer"
            return f"output schema: {where}: {e.message}"
    for i, c in enumerate(fn.spec.checks):
        why = _check(c, i, answer, parsed, variables)
        if why is not None:
            return why
    return None


def each(fn: Function, answer: str | None, variables: dict[str, Any]) -> dict[str, bool]:
    """Whether the answer passes each of the function's checks, by name: ``output_schema`` (when the
    function has one) and each check's name (``checks[i]`` without one). For a gate that must see
    one check regress even when another failed first (:func:`problem` stops at the first)."""
    out: dict[str, bool] = {}
    parsed: Any = _MISSING
    if answer is not None and fn.output_schema is not None:
        try:
            parsed = parse_json(answer)
            out["output_schema"] = not any(True for _ in fn.validator("output").iter_errors(parsed))
        except ValueError:
            out["output_schema"] = False
    elif fn.output_schema is not None:
        out["output_schema"] = False
    for i, c in enumerate(fn.spec.checks):
        out[c.name or f"checks[{i}]"] = answer is not None and _check(c, i, answer, parsed, variables) is None
    return out
