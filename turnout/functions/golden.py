"""A function's golden set: JSON lines of ``variables`` and one scorer.

    {"id": "acme", "variables": {"text": "..."}, "json_fields": {"/total": 120.5, "/currency": "EUR"}}

Scorers: ``exact`` (the answer, trimmed), ``contains``, ``regex`` (text, case-insensitive unless
``"case_sensitive": true``), ``json_schema`` (``true``: the function's output schema, or a
schema object), ``json_fields`` (JSON pointer or top-level key -> expected value; numbers equal
within 1e-6, strings trimmed and case-folded).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout.functions.checks import _MISSING, parse_json, pointer

if TYPE_CHECKING:
    from turnout.functions.spec import Function

SCORERS = ("exact", "contains", "regex", "json_schema", "json_fields")


def load(path: Path, fn: Function) -> list[dict[str, Any]]:
    from turnout.functions.checks import FunctionError

    items: list[dict[str, Any]] = []
    ids: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FunctionError(f"{path}:{n}: not JSON: {exc.msg}") from None
        if not isinstance(item, dict) or not isinstance(item.get("variables"), dict):
            raise FunctionError(f"{path}:{n}: needs 'variables' (an object)")
        scorers = [s for s in SCORERS if s in item]
        if len(scorers) != 1:
            raise FunctionError(f"{path}:{n}: needs exactly one of {', '.join(SCORERS)}")
        s = scorers[0]
        if s == "regex":
            try:
                re.compile(item["regex"])
            except (re.error, TypeError) as exc:
                raise FunctionError(f"{path}:{n}: bad regex: {exc}") from None
        if s == "json_schema" and item[s] is True and fn.output_schema is None:
            raise FunctionError(f"{path}:{n}: json_schema: true needs the function's output_schema")
        if s == "json_fields" and not isinstance(item[s], dict):
            raise FunctionError(f"{path}:{n}: json_fields is an object of pointer -> expected value")
        item["id"] = str(item.get("id", n))
        if item["id"] in ids:
            raise FunctionError(f"{path}:{n}: duplicate id {item['id']!r}")
        ids.add(item["id"])
        item["line"] = n
        items.append(item)
    return items


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(expected, got, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(expected, str) and isinstance(got, str):
        return expected.strip().casefold() == got.strip().casefold()
    return bool(expected == got)


def score(item: dict[str, Any], answer: str, fn: Function) -> bool:
    a = answer.strip()
    fold = (lambda x: x) if item.get("case_sensitive") else str.casefold
    if "exact" in item:
        return fold(a) == fold(str(item["exact"]).strip())
    if "contains" in item:
        return fold(str(item["contains"])) in fold(a)
    if "regex" in item:
        return re.search(item["regex"], a, 0 if item.get("case_sensitive") else re.IGNORECASE) is not None
    try:
        parsed = parse_json(a)
    except ValueError:
        return False
    if "json_schema" in item:
        import jsonschema_rs

        schema: Any = fn.output_schema if item["json_schema"] is True else item["json_schema"]
        return bool(jsonschema_rs.is_valid(schema, parsed))
    for key, expected in item["json_fields"].items():
        got = pointer(parsed, key if key.startswith("/") else "/" + key)
        if got is _MISSING or not _same(expected, got):
            return False
    return True
