"""What the request path needs of a learned router: a score for a prompt and the threshold
at or above which the prompt goes to the strong engines. ``turnout.routing.learned.LearnedRouter``
implements it; the pipeline types against this protocol so that importing it does not pull in
the optional ``router`` extra (numpy, scipy, scikit-learn)."""

from __future__ import annotations

from typing import Protocol


class Router(Protocol):
    """Scores a prompt with P(strong model needed); ``score >= threshold`` escalates."""

    threshold: float

    def score(self, prompt: str) -> float: ...
