"""Conditions on a tool call's arguments, as written in ``turnout.yaml``: ``FIELD OP VALUE``.

    amount > 100
    to not_endswith @example.com
    priority == urgent

FIELD is an argument name (dots reach into objects: ``customer.country``); OP one of
``> >= < <= == != contains not_contains endswith not_endswith``; VALUE a number or a string
(quotes optional). A condition on a missing field holds for ``not_*`` and ``!=`` (the safe
side: an argument that is not there cannot prove it is inside the company) and fails otherwise.
No code is evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

OPS = (">=", "<=", "!=", "==", ">", "<", "not_contains", "contains", "not_endswith", "endswith")
_FORM = re.compile(r"^\s*([A-Za-z_][\w.]*)\s+(" + "|".join(re.escape(o) for o in OPS) + r")\s+(.+?)\s*$")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str
    value: str | float
    text: str

    def holds(self, args: dict[str, Any]) -> bool:
        got: Any = args
        for part in self.field.split("."):
            got = got.get(part, _MISSING) if isinstance(got, dict) else _MISSING
        if got is _MISSING or got is None:
            return self.op.startswith("not_") or self.op == "!="
        if self.op in (">", ">=", "<", "<="):
            try:
                a, b = float(got), float(self.value)
            except (TypeError, ValueError):
                return True  # not a number where one was expected: ask a person
            return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[self.op]
        a_s, b_s = str(got).lower(), str(self.value).lower()
        if self.op in ("==", "!="):
            same = a_s == b_s or _num_eq(got, self.value)
            return same if self.op == "==" else not same
        if self.op.endswith("contains"):
            return (b_s in a_s) != self.op.startswith("not_")
        return a_s.endswith(b_s) != self.op.startswith("not_")


def _num_eq(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def parse_condition(text: str) -> Condition:
    m = _FORM.match(text)
    if m is None:
        raise ValueError(f"condition {text!r} is not FIELD OP VALUE with OP one of {', '.join(OPS)}")
    field, op, raw = m.groups()
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value: str | float = raw[1:-1]
    else:
        try:
            value = float(raw)
        except ValueError:
            value = raw
    if op in (">", ">=", "<", "<=") and not isinstance(value, float):
        raise ValueError(f"condition {text!r}: {op} needs a number")
    return Condition(field, op, value, text)
