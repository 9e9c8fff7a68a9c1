"""Identifiers named by their label (issue 25): "passport number is X4821937", "Employee ID
EMP-20417", "NHS number 943 476 5919", "membership no. MB-447120". Finding type ``ID``.

The checksummed and national formats (cards, IBANs, US SSNs, driver licences) have their own
recognisers in ``pii_patterns``; this one takes any code after a label that names a person's
identifier: mostly digits, upper-case letters and single separators, with at least three digits.
"""

from __future__ import annotations

import re
from typing import Any

from turnout.guards.pii_lexicon import Cand

_LABEL = (r"passport|national insurance|social insurance|social security|tax file|tax|taxpayer|nhs|"
          r"medical record|health insurance|insurance|policy|patient|employee|staff|personnel|payroll|member|"
          r"membership|customer|client|account|bank account|student|citizen|voter|national|identity|id card|"
          r"licen[cs]e|driver'?s licen[cs]e|pension|benefits|case|claim|badge|resident|residence permit|visa")
_ID = re.compile(
    r"\b(?:" + _LABEL + r")(?:\s+(?:card|number|no\.?|num|#|id|identifier|code|reference|ref))*"
    r"(?:\s*(?:is|was|:|=|-|#)\s*|\s+)"
    r"((?-i:(?=[A-Z0-9 /-]*?\d[A-Z0-9 /-]*?\d[A-Z0-9 /-]*?\d)[A-Z0-9]+(?:[ /-][A-Z0-9]+){0,5}))(?![\w-])",
    re.IGNORECASE)


def _ids(text: str, doc: Any) -> list[Cand]:
    out = []
    for m in _ID.finditer(text):
        v = m.group(1)
        if len(v.replace(" ", "").replace("-", "")) < 5 or re.fullmatch(r"(?:19|20)\d\d", v):
            continue
        out.append(Cand(m.start(1), m.end(1), "ID", 0.9, "context"))
    return out
