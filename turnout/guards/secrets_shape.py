"""Is a provider-format match shaped like a token? (issue 25: provider rules on near-misses)

A provider rule (a catalogue rule, a detect-secrets plugin, a fixed-prefix format) says what a
provider's key looks like; some say it loosely (detect-secrets' Telegram rule is
``\\d{8,10}:[0-9A-Za-z_-]{35}`` with no boundary, its Slack rule takes ``xoxb-1-a``). Checks
that hold for any provider, because every issued key is a separate, random token:

- **boundaries** (``glued``): a key is a token of its own, so a match with a letter or digit
  glued before it is part of a longer word or number (``clm99344324:...``, the digits inside a
  longer number). An escape written as text (``\\n``, ``%22``) counts as a boundary, as
  gitleaks' terminators do.
- **fixed length** (``fixed_tail``, ``runs_on``): a format that fixes its length by ending in a
  run of exactly *n* characters of one class (``glsoat-[0-9a-zA-Z_-]{20}``, ``ghp_[0-9a-zA-Z]{36}``,
  Telegram's ``\\d{8,10}:[0-9A-Za-z_-]{35}``) does not match a token whose run goes on past *n*
  (``glsoat-`` + 51): that is another, longer string, not this format. Only the last run's own
  class counts (a ``/``, ``.`` or an escape written as text after it ends the token), and not for
  formats whose provider has lengthened the run since the rule was written (``GROWN``: Discord's
  HMAC part, 27 characters in detect-secrets' rule, can be longer since 2022; Stripe's and
  OpenAI's newer, longer keys).
  Open-ended formats (``{43,56}``, ``+``, gitleaks' terminator groups) already say where they end.
- **random body** (``word_body``): the longest alphanumeric run of a key is random; made of
  English words split at case changes (``AgencyIdentificationCodeContentType``) it is an
  identifier. Random runs of 8+ characters do not read so (none of 18,000 in the tests).
- **the stricter tool decides**: when a detect-secrets plugin and a catalogue rule keyed on
  the token's own prefix both know the provider, a match the catalogue rejects
  (``xoxb-12345-abcd234``: Slack bot tokens have two 10-13 digit parts) is dropped
  (``SecretsGuard._catalogue_disagrees``).

- **self-describing formats**: a JWT's header is base64url JSON (``{"alg": ...}``); a match whose
  header does not decode to a JSON object (``eyJhbasdGciOiJIUadd...``, a header cut short) is not
  a token anyone can use (``jwt_header_ok``; detect-secrets' JWT plugin checks the same).

``word_like`` (letter / digit / case runs averaging 3.5+ characters) is the same idea for
the generic and entropy rules, where there is no provider format to lean on.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from turnout.guards.deobfuscate import _english_words

_RUNS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_SEGMENT = re.compile(r"[A-Za-z0-9]+")
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_ESCAPE_BEFORE = re.compile(r"(?:\\[nrtu]|%[0-9A-Fa-f]{2})$")
_ESCAPE_AFTER = re.compile(r"\\[nrtu]|%[0-9A-Fa-f]{2}")  # the same on the right: "...<key>\nNEXT=..."


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


# a pattern's last element: one character class (or \\d, \\w) repeated exactly n times, closing groups after it
_FIXED_TAIL = re.compile(r"(\[(?:\\.|[^\]\\])+\]|\\[dw])\{\d+\}\)*$")
# formats whose provider lengthened the last run after the rule was written (detect-secrets' secret type):
# Discord's token HMAC "can now be longer than 27 characters" (python-discord/workers#31, June 2022)
# Stripe's and OpenAI's current keys run past detect-secrets' 24 / 20 characters (gitleaks' rules: Stripe
# {10,99}, OpenAI's project keys 58 or 74 after T3BlbkFJ)
GROWN = frozenset({"Discord Bot Token", "Stripe Access Key", "OpenAI Token"})


def fixed_tail(pattern: str, ignore_case: bool = False) -> re.Pattern[str] | None:
    """The class of the last run of a fixed-length format, or None (open-ended, or not a class)."""
    m = _FIXED_TAIL.search(pattern)
    if m is None:
        return None
    try:
        return re.compile(m.group(1), re.IGNORECASE if ignore_case else 0)
    except re.error:
        return None


def runs_on(text: str, end: int, tail: re.Pattern[str] | None) -> bool:
    """The character after a fixed-length match continues its last run: the token is longer than
    the format, so the match is the start of another string (``glimt-`` + 25 of ``glimt-`` + 29)."""
    return (tail is not None and end < len(text) and tail.fullmatch(text[end]) is not None
            and not _ESCAPE_AFTER.match(text, end))


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


def jwt_header_ok(token: str) -> bool:
    """The first dot-separated part of ``token`` is base64url of a JSON object (a JWT / JWS / JWE header)."""
    head = token.strip("\"'` ").split(".", 1)[0]
    try:
        value = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):  # not base64, not UTF-8, not JSON (JSONDecodeError is a ValueError)
        return False
    return isinstance(value, dict)
