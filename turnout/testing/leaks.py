"""Did a value go out in clear? The check the leak tests and ``bench/leak_replay.py`` share."""

from __future__ import annotations

import json
import re
from typing import Any

# <PERSON_7f3a>: the pseudonymizer's placeholders hold hex digits that could match a short value
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_[0-9a-f]{4,16}>")


def wire_text(bodies: list[Any]) -> str:
    """The request bodies an upstream logged, as one JSON string with placeholders blanked."""
    return PLACEHOLDER.sub(" ", json.dumps(bodies))


def sent_in_clear(value: str, wire: str) -> bool:
    """``value`` (JSON-escaped, as it travels) occurs in ``wire`` as a whole word."""
    v = json.dumps(value)[1:-1]
    return re.search(r"(?<![\w])" + re.escape(v) + r"(?![\w])", wire) is not None
