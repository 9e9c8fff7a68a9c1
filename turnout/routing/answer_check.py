"""Post-generation routing for math word problems: inspect the weak model's answer.

This is a cascade signal, not pre-generation routing: the weak model has already answered and
we decide whether to pay for the strong one. Features of a GSM8K-style response: does it end
with ``#### <number>``, is that number an integer, are its ``<<expr=result>>`` calculator
annotations arithmetically right, does the final answer match the last computed result, and a
few hedging words. These are joined with the prompt's own features (its length statistics and,
for ``gsm8k-weak-answer-emb``, its MiniLM embedding): the answer tells whether the weak model
failed, the prompt how likely the strong one is to succeed. Two logistic regressions over them
give the expected-gain score as elsewhere. A scorer's input text is
``cascade_input(prompt, response)``.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

import numpy as np

from turnout.routing.features import text_stats
from turnout.routing.scorers import LinearPair, State

SEPARATOR = "\x1e"  # ASCII record separator between prompt and response


def cascade_input(prompt: str, response: str) -> str:
    return f"{prompt}{SEPARATOR}{response}"


def split_input(text: str) -> tuple[str, str]:
    prompt, sep, response = text.partition(SEPARATOR)
    return (prompt, response) if sep else ("", text)

_CALC = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
_FINAL = re.compile(r"####\s*(.*)")
_ARITH = re.compile(r"[\d.\s+\-*/()]+")
_HEDGES = ("however", "assum", "approximately", "round", "not possible", "cannot", "actually", "wait", "?")


def plain_number(text: str) -> float | None:
    """Value of an arithmetic expression of numbers and + - * / ( ), else None."""
    cleaned = text.replace(",", "").replace("$", "").replace("\\", "").strip().rstrip(".")
    if not cleaned or not _ARITH.fullmatch(cleaned) or "**" in cleaned or len(cleaned) > 80:
        return None
    try:
        value = eval(cleaned, {"__builtins__": {}}, {})
    except (SyntaxError, ZeroDivisionError, TypeError, ValueError, OverflowError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _wrong_calculations(calcs: list[tuple[str, str]]) -> float:
    wrong = 0.0
    for expr, result in calcs:
        a, b = plain_number(expr), plain_number(result)
        if a is None or b is None:
            wrong += 0.5
        elif abs(a - b) > 1e-4 * max(1.0, abs(a)):
            wrong += 1.0
    return wrong


def answer_features(response: str) -> np.ndarray:
    """Signals that a math answer is wrong or unfinished."""
    final = _FINAL.search(response)
    value = plain_number(final.group(1)) if final else None
    calcs = _CALC.findall(response)
    last = plain_number(calcs[-1][1]) if calcs else None
    low = response.lower()
    return np.array(
        [
            0.0 if final else 1.0,
            1.0 if final and value is None else 0.0,
            1.0 if value is not None and abs(value - round(value)) > 1e-9 else 0.0,
            1.0 if value is not None and value < 0 else 0.0,
            min(_wrong_calculations(calcs), 5.0),
            min(len(calcs), 15) / 15.0,
            1.0 if value is not None and last is not None and abs(value - last) > 1e-6 else 0.0,
            math.log1p(len(response)) / 8.0,
            response.count("\n") / 20.0,
            *[1.0 if h in low else 0.0 for h in _HEDGES],
        ],
        dtype=np.float32,
    )


class WeakAnswerCheck:
    """Scores ``cascade_input(prompt, weak_response)`` texts: answer checks + prompt statistics."""

    name: ClassVar[str] = "gsm8k-weak-answer"
    uses_embeddings: ClassVar[bool] = False
    post_generation: ClassVar[bool] = True
    STATS_SCALE = 3.0

    def __init__(self, c: float = 1.0) -> None:
        self.linear = LinearPair(c=c)

    def _design(self, texts: list[str], emb: np.ndarray | None) -> np.ndarray:
        rows = []
        for text in texts:
            prompt, response = split_input(text)
            rows.append(np.concatenate([answer_features(response), self.STATS_SCALE * text_stats(prompt)]))
        design = np.vstack(rows)
        return design if emb is None or not self.uses_embeddings else np.hstack([design, emb])

    def fit(self, prompts: list[str], emb: np.ndarray | None, weak: np.ndarray, strong: np.ndarray) -> None:
        self.linear.fit(self._design(prompts, emb), weak, strong)

    def predict(self, prompts: list[str], emb: np.ndarray | None) -> np.ndarray:
        return self.linear.predict(self._design(prompts, emb))

    def state(self) -> State:
        return {"coef": self.linear.coef, "intercept": self.linear.intercept}

    def load_state(self, state: State) -> None:
        self.linear.coef, self.linear.intercept = state["coef"], state["intercept"]


class WeakAnswerCheckEmb(WeakAnswerCheck):
    """:class:`WeakAnswerCheck` plus the prompt's MiniLM embedding."""

    name: ClassVar[str] = "gsm8k-weak-answer-emb"
    uses_embeddings: ClassVar[bool] = True

    def _design(self, texts: list[str], emb: np.ndarray | None) -> np.ndarray:
        if emb is None:
            raise ValueError(f"router family {self.name!r} needs prompt embeddings")
        return super()._design(texts, emb)
