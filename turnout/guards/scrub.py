"""Scrub text that the gateway stores about a request but did not write itself: an upstream's
error message (a 400 that quotes the prompt back: an e-mail address, an AWS key id) goes into
the ledger's ``hops`` and ``error`` columns, which viewers read and which live as long as the
ledger. Before it is stored it passes here:

- cut to ``SCAN_CHARS`` first (the scan's cost is bounded whatever the upstream sent);
- secrets: the secrets guard's structural patterns and gitleaks catalogue (keyword-gated
  regular expressions) and its entropy rule; detect-secrets' line plugins are left out;
- PII by pattern only: e-mail addresses, card numbers (Luhn), IBANs (mod 97), US SSNs, IP
  addresses, phone numbers, URLs with a scheme or ``www.`` (they can carry tokens). No
  statistical model runs on this path: a name or a place in an error message stays;
- each finding replaced by its type in brackets (``[EMAIL_ADDRESS]``, ``[AWS_ACCESS_TOKEN]``),
  then the result cut to ``limit`` characters.

Cost (``python bench/scrub.py``, the loaded 2-core machine, load average 7): p50 0.27 ms for a
225-character 400 quoting an e-mail address, an AWS key id and a card number, 0.08 ms for a plain
60-character message, 0.73 ms for 400 KB (cut to ``SCAN_CHARS`` first); the record step runs it
once per failed hop and once on the row's error. The secrets detector is built once per process
(60-210 ms), when the recorder is.
"""

from __future__ import annotations

import threading

from turnout.guards.base import Finding
from turnout.guards.pii_patterns import _cards, _emails, _ibans, _ips, _phones, _ssns, _urls
from turnout.guards.secrets import SecretsGuard

SCAN_CHARS = 2000   # at most this much of a message is scanned (and so kept)
LIMIT = 300         # stored length of a hop's message, after redaction

_PII = (_emails, _cards, _ibans, _ssns, _ips, _phones, _urls)
_lock = threading.Lock()
_secrets: SecretsGuard | None = None


def _guard() -> SecretsGuard:
    global _secrets
    with _lock:
        if _secrets is None:
            _secrets = SecretsGuard(detect_secrets=False)
        return _secrets


def findings(text: str, secrets: bool = True) -> list[Finding]:
    """Secrets (unless ``secrets`` is False: a text the secrets guard has seen already) and pattern
    PII in ``text``, overlapping spans merged (the longer wins)."""
    found = list(_guard().inspect(text)) if secrets else []
    for fn in _PII:
        found += [Finding("pii", c.type, c.start, c.end, c.score, "scrub") for c in fn(text, None)
                  if c.type != "URL" or c.score >= 0.9]  # a bare domain ("api.example.com") is no secret
    found.sort(key=lambda f: (f.start, -(f.end - f.start)))
    kept: list[Finding] = []
    for f in found:
        if kept and f.start < kept[-1].end:
            if f.end > kept[-1].end:  # overlapping: one span covering both
                last = kept[-1]
                kept[-1] = Finding(last.kind, last.type, last.start, f.end, last.score, last.detector)
            continue
        kept.append(f)
    return kept


def scrub(text: str | None, limit: int = LIMIT) -> str | None:
    """``text`` with secrets and pattern PII replaced by their type, at most ``limit`` characters."""
    if text is None:
        return None
    text = text[:SCAN_CHARS]
    for f in reversed(findings(text)):
        text = text[: f.start] + f"[{f.type}]" + text[f.end:]
    return text if len(text) <= limit else text[: limit - 1] + "…"
