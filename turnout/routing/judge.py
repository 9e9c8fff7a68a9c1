"""Judges: was the weak engine's answer as good as the strong engine's, for one prompt?

A judge returns a :class:`Verdict`: both answers' scores in [0, 1] (None where it cannot tell)
and its own name, recorded with the label (``route_labels.judge``). Judges, cheapest first:

- :class:`ExactAnswer`: the final answer (the last number, or ``#### N``) of both answers agrees.
  The strong answer is taken as the reference, so a disagreement scores the weak answer 0.
- :class:`SchemaCheck`: the request asked for JSON with a schema (``response_format``); an answer
  scores 1 when it parses and fits the schema's types and required properties.
- :class:`LLMJudge`: an engine of the user's choice (a route) reads both answers and a versioned
  rubric (:data:`RUBRIC_VERSION`) and says whether the weak one is as good; recorded as
  ``llm:<engine>:<rubric version>``.
- :class:`LabelJudge`: reads known outcomes by prompt (the replay simulator's data set).

User feedback is a label source of its own (``turnout.routing.shadow.feedback_label``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

RUBRIC_VERSION = "rubric-v1"
RUBRIC = """You compare two answers to the same request. Answer A comes from a small model, answer B
from a large one. Decide whether A is as good as B for the user: correct where B is correct,
complete enough, and following the request's instructions. Style and length do not matter.
Reply with exactly one line: "VERDICT: SAME" if A is as good as B, "VERDICT: WORSE" if it is not.

Request:
{prompt}

Answer A:
{weak}

Answer B:
{strong}
"""
_VERDICT = re.compile(r"VERDICT:\s*(SAME|WORSE)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FINAL = re.compile(r"####\s*([^\n]+)")


@dataclass(frozen=True)
class Verdict:
    weak_score: float | None
    strong_score: float | None
    judge: str


class Judge(Protocol):
    name: str

    async def judge(self, prompt: str, weak: str, strong: str, request: Mapping[str, Any] | None = None
                    ) -> Verdict | None: ...


def final_answer(text: str) -> str | None:
    """``#### N`` if present, else the last number of the text, normalised (no commas, no .0)."""
    m = _FINAL.search(text)
    candidate = m.group(1) if m else None
    numbers = _NUMBER.findall(candidate if candidate is not None else text)
    if not numbers:
        return candidate.strip().lower() if candidate else None
    value = str(numbers[-1]).replace(",", "")
    try:
        f = float(value)
    except ValueError:
        return value
    return str(int(f)) if f.is_integer() else f"{f:g}"


class ExactAnswer:
    """Weak answer right iff its final answer equals the strong one's; None if either has none."""

    name = "exact-answer"

    async def judge(self, prompt: str, weak: str, strong: str, request: Mapping[str, Any] | None = None
                    ) -> Verdict | None:
        a, b = final_answer(weak), final_answer(strong)
        if a is None or b is None:
            return None
        return Verdict(1.0 if a == b else 0.0, 1.0, self.name)


_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,),
                                       "integer": (int,), "number": (int, float), "boolean": (bool,),
                                       "null": (type(None),)}


def fits_schema(value: Any, schema: Mapping[str, Any]) -> bool:
    """Types, required properties, enums and array items of a JSON schema (the common subset)."""
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if kinds:
        ok = any(isinstance(value, _TYPES.get(str(k), ()))
                 and not (k in ("integer", "number") and isinstance(value, bool))
                 for k in kinds)
        if not ok:
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        if any(r not in value for r in schema.get("required", [])):
            return False
        props = schema.get("properties") or {}
        return all(fits_schema(value[k], props[k]) for k in value if k in props and isinstance(props[k], dict))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return all(fits_schema(v, schema["items"]) for v in value)
    return True


class SchemaCheck:
    """Both answers checked against the request's ``response_format`` JSON schema."""

    name = "json-schema"

    @staticmethod
    def schema_of(request: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        fmt = (request or {}).get("response_format") or {}
        if fmt.get("type") != "json_schema":
            return None
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema")
        return schema if isinstance(schema, dict) else None

    @staticmethod
    def _score(text: str, schema: Mapping[str, Any]) -> float:
        try:
            return 1.0 if fits_schema(json.loads(text), schema) else 0.0
        except (json.JSONDecodeError, TypeError):
            return 0.0

    async def judge(self, prompt: str, weak: str, strong: str, request: Mapping[str, Any] | None = None
                    ) -> Verdict | None:
        schema = self.schema_of(request)
        if schema is None:
            return None
        return Verdict(self._score(weak, schema), self._score(strong, schema), self.name)


class LLMJudge:
    """An engine answers the rubric; ``complete(text) -> answer`` is that engine's chat call."""

    def __init__(self, engine: str, complete: Callable[[str], Awaitable[str]], rubric_version: str = RUBRIC_VERSION,
                 rubric: str = RUBRIC) -> None:
        self.complete, self.rubric = complete, rubric
        self.name = f"llm:{engine}:{rubric_version}"

    async def judge(self, prompt: str, weak: str, strong: str, request: Mapping[str, Any] | None = None
                    ) -> Verdict | None:
        reply = await self.complete(self.rubric.format(prompt=prompt, weak=weak, strong=strong))
        m = _VERDICT.search(reply or "")
        if m is None:
            return None  # an unreadable verdict is no label
        return Verdict(1.0 if m.group(1).upper() == "SAME" else 0.0, 1.0, self.name)


class LabelJudge:
    """Known outcomes by prompt text: ``{prompt: (weak_score, strong_score)}``."""

    name = "labels"

    def __init__(self, outcomes: Mapping[str, tuple[float, float]]) -> None:
        self.outcomes = outcomes

    async def judge(self, prompt: str, weak: str, strong: str, request: Mapping[str, Any] | None = None
                    ) -> Verdict | None:
        found = self.outcomes.get(prompt)
        return None if found is None else Verdict(float(found[0]), float(found[1]), self.name)


class FirstOf:
    """The first judge that can tell (e.g. the schema check, then the exact answer, then an LLM)."""

    def __init__(self, *judges: Judge) -> None:
        self.judges = judges
        self.name = "+".join(j.name for j in judges)

    async def judge(self, prompt: str, weak: str, strong: str, request: Mapping[str, Any] | None = None
                    ) -> Verdict | None:
        for j in self.judges:
            v = await j.judge(prompt, weak, strong, request)
            if v is not None:
                return v
        return None
