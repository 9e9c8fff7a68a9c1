"""Is a provider-format match shaped like a token? (issue 25: provider rules on near-misses)

A provider rule (a catalogue rule, a detect-secrets plugin, a fixed-prefix format) says what a
provider's key looks like; some say it loosely (detect-secrets' Telegram rule is
``\\d{8,10}:[0-9A-Za-z_-]{35}`` with no boundary, its Slack rule takes ``xoxb-1-a``). Checks
that hold for any provider, because every issued key is a separate, random token:

- **boundaries** (``glued``): a key is a token of its own, so a match with a letter or digit
  glued before it is part of a longer word or number (``clm99344324:...``, the digits inside a
  longer number). An escape written as text (``\\n``, ``%22``) counts as a boundary, as
  gitleaks' terminators do. The right side is not used by the guard: fixed-length rules match
  the start of newer, longer formats (Discord's 38-character signatures).
- **random body** (``word_body``): the longest alphanumeric run of a key is random; made of
  English words split at case changes (``AgencyIdentificationCodeContentType``) it is an
  identifier. Random runs of 8+ characters do not read so (none of 18,000 in the tests).
- **the stricter tool decides**: when a detect-secrets plugin and a catalogue rule keyed on
  the token's own prefix both know the provider, a match the catalogue rejects
  (``xoxb-12345-abcd234``: Slack bot tokens have two 10-13 digit parts) is dropped
  (``SecretsGuard._catalogue_disagrees``).

``word_like`` (letter / digit / case runs averaging 3.5+ characters) is the same idea for
the generic and entropy rules, where there is no provider format to lean on.
"""

from __future__ import annotations

import re

from turnout.guards.deobfuscate import _english_words

_RUNS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_SEGMENT = re.compile(r"[A-Za-z0-9]+")
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_ESCAPE_BEFORE = re.compile(r"(?:\\[nrtu]|%[0-9A-Fa-f]{2})$")


def word_like(token: str) -> bool:
    """Words and numbers joined (``id-Gost28147-89-None-KeyMeshing``, ``rc0.15.0_20231217-SNAPSHOT``):
    their letter / digit / case runs average 3.5 characters or more, which fewer than 1 in 1,000
    random base62 or base64url tokens of 24+ characters reach (a random token changes class every
    ~2 characters)."""
    runs = _RUNS.findall(token)
    return bool(runs) and sum(map(len, runs)) / len(runs) >= 3.5


def glued(text: str, start: int) -> bool:
    """A letter or digit touches ``text[start]`` on its left (an escape written as text, ``\\n`` or
    ``%22``, does not count). Only the left: a fixed-length rule may match the start of a longer,
    newer format of the same provider's key (Discord's 38-character signatures)."""
    if start == 0 or not (text[start - 1].isascii() and text[start - 1].isalnum()):
        return False
    return not _ESCAPE_BEFORE.search(text, max(0, start - 3), start)


def _body(token: str) -> str:
    return max(_SEGMENT.findall(token), key=len, default="")


def word_body(token: str) -> bool:
    """The longest alphanumeric run (8+ characters) is 80 % or more English words of 3+ letters,
    split at case changes (``AgencyIdentificationCodeContentType``, ``ConfigurationManager``)."""
    body = _body(token)
    if len(body) < 8:
        return False
    eng = _english_words()
    return sum(len(w) for w in _WORD.findall(body) if len(w) >= 3 and w.lower() in eng) >= 0.8 * len(body)
