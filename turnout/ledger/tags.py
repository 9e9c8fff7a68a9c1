"""What a function call (``turnout.functions``) adds to each ledger row of its pipeline calls.

The pipeline carries one of these on ``Call.function``: once the answer is final it calls
``judge(answer)`` (the function's output check, so the verdict is in the same row), and
``record`` copies ``ledger_fields()`` into the row. It knows nothing else about functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class FunctionTag:
    function: str                 # the function's name (``fn:NAME`` without the prefix)
    variant: str
    template_hash: str            # the variant's template version
    episode: str | None = None    # the caller's episode id, for sticky assignment
    attempt: str = "first"        # first | retry | escalated
    outcome: str | None = None    # valid | unchecked | invalid: <why>; set by judge()
    check: Callable[[str | None], str | None] | None = field(default=None, repr=False)  # answer -> why invalid
    input_sha256: str | None = None  # of the caller's variables (turnout.ledger.capture.variables_digest): not a column

    def judge(self, answer: str | None) -> None:
        if self.check is None:
            self.outcome = "unchecked"
            return
        why = self.check(answer)
        self.outcome = "valid" if why is None else f"invalid: {why}"[:500]

    @property
    def valid(self) -> bool:
        return self.outcome in ("valid", "unchecked")

    def ledger_fields(self) -> dict[str, Any]:
        return {"function": self.function, "variant": self.variant, "template_hash": self.template_hash,
                "episode": self.episode, "function_attempt": self.attempt, "function_outcome": self.outcome}
