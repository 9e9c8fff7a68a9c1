"""Secret detector: gitleaks' rule catalogue (loaded as data), plus keyword, structure and
entropy logic for credentials no provider rule names.

1. **Catalogue.** ``data/gitleaks.toml`` is gitleaks' default rule file, shipped unchanged
   (MIT, ``data/gitleaks.LICENSE``): ~220 provider rules with regexes, keywords, entropy
   limits, allowlists and stop-words. It is read with ``tomllib``; Go RE2 syntax is
   translated to Python's (``translate_re2``: a mid-pattern ``(?i)`` becomes a scoped group to
   the end of its group, POSIX classes are spelt out, ``\\z`` is ``\\Z``). A rule runs only when
   one of its keywords is in the text, its secret (``secretGroup`` or the first non-empty
   group) must reach the rule's entropy, and the global and per-rule allowlists apply.
2. **Structure** (``PATTERNS``): private key blocks (not encrypted ones: they are useless
   without their pass phrase), credentials in URLs, ``curl -u user:pass``, PowerShell
   ``ConvertTo-SecureString``, ``Authorization:`` headers, passwords in XML elements and
   attributes, and ``*_PASSWORD = ...`` style assignments whose name merely *ends* in a
   credential word (``DB_PASSWORD``, ``client_secret``, ``smtp_passwd``), unless the value is
   code (``token: Optional[str]``, ``secret = tokens[i]``: ``secrets_context.code_value``), a
   placeholder or sample (``YOUR_KEY``, ``abc123``), or the name says it is made up (``fakeToken``).
3. **detect-secrets** (Yelp, Apache-2.0, PyPI; used when installed): its provider plugins
   (Artifactory, SoftLayer, Cloudant, IBM, Mailchimp, ...) and its keyword plugin, line by
   line. Its entropy and public-IP plugins are left out (entropy is below; an IP is PII here).
4. **Formats** (``secrets_formats``): SQL ``IDENTIFIED BY`` / ``PASSWORD '...'``, NTLM/LM
   hashes, OTP secrets, NATS NKEY seeds and provider prefixes the catalogue lacks.
5. **Entropy.** Long random-looking tokens (detect-secrets' idea), except base64 blobs that
   decode to a known binary type (PDF, images, archives, DER certificates, mail parts), and only
   with supporting context (``secrets_context``: a secret-like name, a credential prefix or a
   credential word nearby): a bare random string in code or a binary is not a secret.

Provider matches (1, 3, 4) must be tokens (``secrets_shape``): nothing glued before them, a body
that is not English words, no run past a format's fixed length (``glimt-`` + 29 is not ``glimt-``
+ 25), a JWT header that is JSON; where both tools know a key prefix the catalogue's stricter
format decides (its length only where it fixes one the provider does not), and a generic finding
on such a prefix, or on a match that ran past its length, is a near-miss. A value that spells
*example* (AWS's documented ``AKIA...EXAMPLE`` pair) is documentation, whatever finds it.

A secret is never something to pseudonymize: policy keeps the request off remote engines
(or refuses it), so recall matters more than precision here.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout.guards.base import Finding
from turnout.guards.secrets_context import code_value, has_context, non_secret_name
from turnout.guards.secrets_formats import format_spans
from turnout.guards.secrets_shape import GROWN, fixed_tail, glued, jwt_header_ok, runs_on, word_body, word_like

if TYPE_CHECKING:
    from turnout.config import GuardsConfig

CATALOGUE = Path(__file__).with_name("data") / "gitleaks.toml"

_NAME = (r"(?:passw(?:or)?d|passwd|pwd|passphrase|pass|secret|api[_-]?key|apikey|access[_-]?key|"
         r"access[_-]?token|auth[_-]?token|client[_-]?secret|private[_-]?key|token|credentials?)")
_VALUE_END = r"[^\s\"'<>;,&`]"

# (type, pattern, score). Group 1, when present, is the secret itself.
PATTERNS: list[tuple[str, re.Pattern[str], float]] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
                               r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"), 1.0),
    ("CREDENTIAL_IN_URL",
     re.compile(r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@\"']{0,64}:([^\s@/\"']{1,128})@[^\s/]+"), 0.95),
    ("PASSWORD", re.compile(r"\bcurl\b[^\n|;]*?\s(?:-u|--user)\s*[\"']?[^\s:\"']{1,64}:([^\s\"']{3,128})"), 0.9),
    ("PASSWORD", re.compile(r"(?i)ConvertTo-SecureString\s+(?:-String\s+)?[\"']([^\"'\s]{4,128})[\"']"), 0.9),
    ("PASSWORD", re.compile(r"(?i)<(\w*" + _NAME + r")>\s*([^<\s]{4,200})\s*</\1>"), 0.85),
    ("PASSWORD", re.compile(r"(?i)<add\s+key=\"[\w.:-]*" + _NAME + r"\"\s+value=\"([^\"]{4,200})\""), 0.85),
    ("PASSWORD", re.compile(r"(?i)(?<![a-z0-9])[a-z0-9_.-]{0,40}" + _NAME +
                            r"(?![a-z0-9])[\"']?\s*(?::=|=>|[:=])\s*[\"']?(" + _VALUE_END + r"{6,200})"), 0.85),
    ("PASSWORD", re.compile(r"(?i)\b(?:my|the|our)\s+(?:password|passcode|pin)\s+(?:is|was|=|:)\s*"
                            r"[\"']?([^\s\"']{4,128})"),
     0.85),
    ("BEARER_TOKEN", re.compile(r"(?i)\bauthorization[\"']?\s*:\s*[\"']?(?:(?:bearer|basic|token)\s+)?"
                                r"([A-Za-z0-9._~+/=-]{12,})"), 0.9),
]
_XML_GROUP = 2  # the XML element pattern's secret is its second group

_CANDIDATE = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{24,}(?![A-Za-z0-9+/_=-])")
_HEX = re.compile(r"[0-9a-fA-F]+")
# base64 wrapped at a fixed width over several lines (MIME parts, embedded files): a file, not a key
_WRAPPED_BLOB = re.compile(r"(?m)^([A-Za-z0-9+/]{60,76})\r?\n(?:[A-Za-z0-9+/]{60,76}\r?\n)*[A-Za-z0-9+/]*={0,2}$")
# a line of base64 key material (PEM wraps at 64, OpenSSH at 70): a header alone is a marker
_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/=]{40,}")
_ENCRYPTED_KEY = re.compile(r"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,ENCRYPTED")
# base64 prefixes of binary formats that are never a credential by themselves
_BINARY_MAGIC = (b"%PDF", b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"PK\x03\x04", b"\x1f\x8b", b"BM", b"II*\x00",
                 b"MM\x00*", b"RIFF", b"\x00\x00\x01\x00", b"wOF", b"OTTO", b"\x00\x01\x00\x00", b"\xd0\xcf\x11\xe0",
                 b"7z\xbc\xaf", b"Rar!", b"0\x82", b"0\x80", b"MIME-Version", b"Content-Type", b"<?xml", b"<svg")


def shannon_entropy(s: str) -> float:
    """Bits per character."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def binary_blob(token: str) -> bool:
    """``token`` is base64 of a known binary (or mail / markup) format."""
    head = token[:64].rstrip("=")
    head = head[: len(head) // 4 * 4]
    try:
        raw = base64.b64decode(head, validate=True) if head else b""
    except (binascii.Error, ValueError):
        return False
    return raw.startswith(_BINARY_MAGIC)


def high_entropy(token: str) -> bool:
    """detect-secrets style: long, mixed, and random-looking. Hex strings (hashes, ids)
    and words joined by dashes are excluded unless very random; so are base64 blobs of
    binary files and very long runs (embedded files, not keys)."""
    if len(token) < 24 or len(token) > 1000 or "//" in token:
        return False
    classes = sum(bool(re.search(p, token)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    if classes < 3:
        return False
    if re.fullmatch(r"[A-Za-z]+(?:[-_][A-Za-z]+)+", token):
        return False
    if _HEX.fullmatch(token):
        return shannon_entropy(token) > 3.9 and len(token) >= 40
    digits = sum(c.isdigit() for c in token)
    return (shannon_entropy(token) >= 4.2 and 0 < digits < len(token) * 0.8 and not word_like(token)
            and not binary_blob(token))


# ---------------------------------------------------------------- the gitleaks catalogue

_POSIX = {"alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "digit": "0-9", "lower": "a-z", "upper": "A-Z",
          "space": r"\s", "xdigit": "0-9a-fA-F", "punct": r"!-/:-@\[-`{-~", "word": r"\w"}


def translate_re2(pattern: str) -> str:
    """A Go RE2 pattern as an equivalent Python ``re`` pattern (for what gitleaks uses):
    ``(?i)`` / ``(?s)`` after the start apply to the rest of their group, as in RE2."""
    p = re.sub(r"\[:(\w+):\]", lambda m: _POSIX.get(m.group(1), m.group(0)), pattern)
    p = p.replace(r"\z", r"\Z")
    out: list[str] = []
    closers = [0]  # per open group (the first: the whole pattern): scoped groups to close with it
    i = 0
    in_class = False
    while i < len(p):
        c = p[i]
        if c == "\\":
            out.append(p[i: i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            n = 2 if p[i + 1: i + 2] == "]" else 3 if p[i + 1: i + 3] == "^]" else 1
            out.append(p[i: i + n])
            i += n
            continue
        m = re.match(r"\(\?([is]+)\)", p[i:])
        if m and i > 0:
            out.append(f"(?{m.group(1)}:")
            closers[-1] += 1
            i += m.end()
            continue
        if c == "(":
            closers.append(0)
        elif c == ")" and len(closers) > 1:
            out.append(")" * closers.pop())
        out.append(c)
        i += 1
    out.append(")" * closers[0])
    return "".join(out)


@dataclass(frozen=True)
class Rule:
    id: str
    regex: re.Pattern[str]
    secret_group: int
    entropy: float
    keywords: tuple[str, ...]
    allow_secret: tuple[re.Pattern[str], ...]   # regexes on the secret
    allow_match: tuple[re.Pattern[str], ...]    # regexes on the whole match
    allow_line: tuple[re.Pattern[str], ...]     # regexes on the line
    stopwords: tuple[str, ...]
    fixed_tail: re.Pattern[str] | None = None   # the last run's class, where the format fixes its length


def _compile(p: str) -> re.Pattern[str] | None:
    try:
        return re.compile(translate_re2(p))
    except re.error:
        try:  # the README's approximation: a whole-pattern IGNORECASE
            return re.compile(re.sub(r"\(\?i\)", "", p).replace(r"\z", r"\Z"), re.IGNORECASE)
        except re.error:
            return None


@dataclass(frozen=True)
class Catalogue:
    rules: tuple[Rule, ...]
    global_allow: tuple[re.Pattern[str], ...]
    global_stopwords: tuple[str, ...]
    skipped: tuple[str, ...]   # rule ids not used: scoped to file paths, or no Python regex
    prefixes: tuple[str, ...] = ()         # keywords of the provider rules, 3+ characters
    format_prefixes: tuple[str, ...] = ()  # those that are a key's own prefix (``format_prefixes``)


def format_prefixes(keywords: frozenset[str]) -> tuple[str, ...]:
    """Catalogue keywords that are a key's own prefix (``ghp_``, ``xoxb``, ``dapi``): not an English
    word (``test_``, ``curl``), not a provider's name (``heroku``, ``datadog``: 6+ letters only)."""
    from turnout.guards.deobfuscate import _english_words

    eng = _english_words()
    return tuple(sorted(k for k in keywords if re.sub(r"[^a-z]", "", k) not in eng and k[0].isalnum()
                        and (len(k) <= 5 or not k.isalpha())))


@lru_cache(maxsize=4)
def load_catalogue(path: Path = CATALOGUE) -> Catalogue:
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    rules: list[Rule] = []
    skipped: list[str] = []
    for r in doc.get("rules", []):
        rx = _compile(r["regex"]) if "regex" in r else None
        if rx is None or "path" in r:  # a path-scoped rule needs a file name, which a request has not
            skipped.append(r["id"])
            continue
        allow: dict[str, list[re.Pattern[str]]] = {"secret": [], "match": [], "line": []}
        stop: list[str] = []
        for a in r.get("allowlists", []):
            if a.get("paths") and a.get("condition", "OR").upper() == "AND":
                continue  # needs a file path, which a request has not
            target = a.get("regexTarget", "secret")
            allow[target].extend(c for c in (_compile(x) for x in a.get("regexes", [])) if c is not None)
            stop.extend(s.lower() for s in a.get("stopwords", []))
        rules.append(Rule(r["id"], rx, int(r.get("secretGroup", 0)), float(r.get("entropy", 0.0)),
                          tuple(k.lower() for k in r.get("keywords", [])), tuple(allow["secret"]),
                          tuple(allow["match"]), tuple(allow["line"]), tuple(stop),
                          fixed_tail(r["regex"], "(?i)" in r["regex"])))
    g = doc.get("allowlist", {})
    prefixes = frozenset(k for r in rules if not r.id.startswith("generic") for k in r.keywords if len(k) >= 3)
    return Catalogue(tuple(rules), tuple(c for c in (_compile(x) for x in g.get("regexes", [])) if c is not None),
                     tuple(s.lower() for s in g.get("stopwords", [])), tuple(skipped), tuple(sorted(prefixes)),
                     format_prefixes(prefixes))


def _secret_span(m: re.Match[str], group: int) -> tuple[int, int]:
    if group and m.lastindex and group <= m.lastindex and m.group(group):
        return m.span(group)
    for i in range(1, (m.lastindex or 0) + 1):
        if m.group(i):
            return m.span(i)
    return m.span()


def _line(text: str, s: int, e: int) -> str:
    a = text.rfind("\n", 0, s) + 1
    b = text.find("\n", e)
    return text[a: b if b >= 0 else len(text)]


def catalogue_findings(text: str, cat: Catalogue, detector: str,
                       ran_on: list[tuple[int, int]] | None = None) -> list[Finding]:
    """Findings of the catalogue's rules; ``ran_on`` collects the spans of provider matches dropped
    only because the token runs past the rule's fixed length (``secrets_shape.runs_on``)."""
    low = text.lower()
    out: list[Finding] = []
    for rule in cat.rules:
        if rule.keywords and not any(k in low for k in rule.keywords):
            continue
        for m in rule.regex.finditer(text):
            s, e = _secret_span(m, rule.secret_group)
            secret = text[s:e]
            if not secret or (rule.entropy and shannon_entropy(secret) < rule.entropy):
                continue
            sl = secret.lower()
            if any(w in sl for w in rule.stopwords) or any(w in sl for w in cat.global_stopwords):
                continue
            if any(a.search(secret) for a in (*rule.allow_secret, *cat.global_allow)):
                continue
            if any(a.search(m.group(0)) for a in rule.allow_match):
                continue
            if rule.allow_line and any(a.search(_line(text, s, e)) for a in rule.allow_line):
                continue
            if not rule.id.startswith("generic") and s == m.start() and glued(text, s):
                continue  # glpat- + 20 of a longer string: part of another token (secrets_shape)
            if not rule.id.startswith("generic") and runs_on(text, m.end(), rule.fixed_tail):
                if ran_on is not None:
                    ran_on.append((s, e))
                continue  # glsoat- + 20 of glsoat- + 51: longer than the format (secrets_shape)
            typ = rule.id.upper().replace("-", "_")
            score = 0.8 if rule.id.startswith("generic") else 0.95
            out.append(Finding("secret", typ, s, e, score, detector))
    return out


# ---------------------------------------------------------------- detect-secrets

_DS_SKIP = {"Public IP (ipv4)", "Base64 High Entropy String", "Hex High Entropy String"}


@lru_cache(maxsize=1)
def detect_secrets_plugins() -> tuple[object, ...]:
    """detect-secrets' plugin instances, or () when the package is not installed."""
    try:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    except ImportError:
        return ()
    mapping: dict[str, Any] = dict(get_mapping_from_secret_type_to_class())
    return tuple(mapping[t]() for t in sorted(mapping) if t not in _DS_SKIP)


@lru_cache(maxsize=1)
def _plugin_tails() -> dict[str, tuple[tuple[re.Pattern[str], re.Pattern[str]], ...]]:
    """Per detect-secrets secret type: its fixed-length patterns and their last run's class
    (``secrets_shape.fixed_tail``; not for ``GROWN`` formats)."""
    out: dict[str, tuple[tuple[re.Pattern[str], re.Pattern[str]], ...]] = {}
    for p in detect_secrets_plugins():
        typ = str(getattr(p, "secret_type", ""))
        if typ in GROWN:
            continue
        pairs = []
        for rx in getattr(p, "denylist", ()):
            if isinstance(rx, re.Pattern) and (tail := fixed_tail(rx.pattern, bool(rx.flags & re.IGNORECASE))):
                pairs.append((rx, tail))
        if pairs:
            out[typ] = tuple(pairs)
    return out


def _runs_past_format(line: str, typ: str, end: int) -> bool:
    """A fixed-length detect-secrets pattern ends at ``end`` and the token goes on (``runs_on``)."""
    return any(m.end() == end and runs_on(line, end, tail)
               for rx, tail in _plugin_tails().get(typ, ()) for m in rx.finditer(line))


def detect_secrets_findings(text: str, detector: str, max_line: int = 2000,
                            ran_on: list[tuple[int, int]] | None = None) -> list[Finding]:
    """Findings of detect-secrets' plugins, line by line; ``ran_on`` as in ``catalogue_findings``."""
    out: list[Finding] = []
    plugins = detect_secrets_plugins()
    pos = 0
    for n, line in enumerate(text.split("\n")):
        if line.strip() and len(line) <= max_line:
            for p in plugins:
                for found in p.analyze_line(filename="request.txt", line=line, line_number=n):  # type: ignore[attr-defined]
                    value = found.secret_value
                    i = line.find(value) if value else -1
                    if i >= 0 and _runs_past_format(line, found.type, i + len(value)):
                        if ran_on is not None:
                            ran_on.append((pos + i, pos + i + len(value)))
                    elif i >= 0:
                        typ = re.sub(r"\W+", "_", found.type).strip("_").upper()
                        score = 0.75 if found.type == "Secret Keyword" else 0.9
                        out.append(Finding("secret", typ, pos + i, pos + i + len(value), score, detector))
        pos += len(line) + 1
    return out


# ---------------------------------------------------------------- the guard


class SecretsGuard:
    """Detect credentials (regular expressions, keyword-gated; no model)."""

    name = "secrets"
    kinds = ("secret",)
    config_model = None
    scans_output = True

    @classmethod
    def from_config(cls, cfg: GuardsConfig, options: None) -> SecretsGuard:
        """Built by ``guards.detectors``; scans answers too (an output guard)."""
        return cls()

    def __init__(self, *, entropy: bool = True, catalogue: Path | None = CATALOGUE,
                 detect_secrets: bool = True) -> None:
        self.entropy = entropy
        self.catalogue = load_catalogue(catalogue) if catalogue is not None else None
        self.detect_secrets = detect_secrets and bool(detect_secrets_plugins())

    def inspect(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        cat_ran_on: list[tuple[int, int]] = []  # provider matches longer than their format (secrets_shape)
        ds_ran_on: list[tuple[int, int]] = []
        encrypted = bool(_ENCRYPTED_KEY.search(text))
        for typ, rx, score in PATTERNS:
            for m in rx.finditer(text):
                if rx.groups >= _XML_GROUP and rx.pattern.startswith("(?i)<(") and m.group(_XML_GROUP):
                    s, e = m.span(_XML_GROUP)
                else:
                    s, e = (m.start(1), m.end(1)) if m.groups() and m.group(1) else (m.start(), m.end())
                if typ in _VALUE_TYPES and (_looks_like_placeholder(text[s:e])
                                            or non_secret_name(text[m.start():s])
                                            or code_value(text, m.start(), s, e)):
                    continue
                if typ == "PRIVATE_KEY" and (encrypted and _ENCRYPTED_KEY.search(m.group(0))
                                             or not _KEY_MATERIAL.search(text, m.start(), m.end())):
                    continue
                found.append(Finding("secret", typ, s, e, score, f"{self.name}.pattern"))
        for typ, s, e, score in format_spans(text):
            if typ in _VALUE_TYPES and _looks_like_placeholder(text[s:e]):
                continue
            if typ not in _VALUE_TYPES and not_a_token(text, s, e):
                continue
            found.append(Finding("secret", typ, s, e, score, f"{self.name}.format"))
        if self.catalogue is not None:
            for f in catalogue_findings(text, self.catalogue, f"{self.name}.gitleaks", cat_ran_on):
                if f.type in ("PRIVATE_KEY",) and encrypted:
                    continue
                if f.type.startswith("GENERIC") and (_looks_like_placeholder(text[f.start:f.end])
                                                     or word_like(text[f.start:f.end])
                                                     or non_secret_name(_name_before(text, f.start))):
                    continue
                if not f.type.startswith("GENERIC") and not_a_token(text, f.start, f.end):
                    continue
                if f.type == "JWT" and not jwt_header_ok(text[f.start:f.end]):
                    continue  # a header that is not JSON: not a usable token (secrets_shape)
                found.append(f)
        if self.detect_secrets:
            for f in detect_secrets_findings(text, f"{self.name}.detect_secrets", ran_on=ds_ran_on):
                if f.type == "PRIVATE_KEY" and (encrypted or not _KEY_MATERIAL.search(text[f.end: f.end + 200])):
                    continue  # a header with no key after it: a marker in code or docs, not a key
                if f.type in _DS_VALUE_TYPES:
                    name = _name_before(text, f.start)
                    if (_looks_like_placeholder(text[f.start:f.end]) or non_secret_name(name)
                            or code_value(text, text.rfind(name, 0, f.start) if name else f.start, f.start, f.end)):
                        continue
                token = _token_at(text, f.start, f.end)
                if _filler(token) or _FILLER_WORDS.search(token + " " + text[f.start:f.end]):
                    continue  # ghp_xxxx..., sk-YOUR_KEY_HERE: a prefix followed by filler
                if f.type not in _DS_VALUE_TYPES and f.type != "PRIVATE_KEY" and (
                        glued(text, f.start) or not_a_token(text, f.start, f.end)
                        or self._catalogue_disagrees(token, f, found, cat_ran_on)):
                    continue  # a loose provider rule on part of a longer word, or on a sample
                found.append(f)
        if self.entropy:
            pem = [(m.start(), m.end())
                   for m in re.finditer(r"-----BEGIN [A-Z0-9 ]+-----[\s\S]*?-----END [A-Z0-9 ]+-----", text)
                   ] if "-----BEGIN" in text else []
            pem += [(m.start(), m.end()) for m in _WRAPPED_BLOB.finditer(text)]
            for m in _CANDIDATE.finditer(text):
                if any(a <= m.start() < b for a, b in pem):
                    continue  # a PEM block (a key is caught whole above; certificates are public) or a wrapped file
                if (high_entropy(m.group(0)) and not _FILLER_WORDS.search(m.group(0))
                        and not text.startswith(_ELLIPSIS, m.end()) and has_context(text, m.start(), m.end())):
                    found.append(Finding("secret", "HIGH_ENTROPY_STRING", m.start(), m.end(), 0.6,
                                         f"{self.name}.entropy"))
        found = [f for f in found if not _EXAMPLE.search(text[f.start:f.end])]
        return _dedupe(self._drop_provider_near_misses(text, found, cat_ran_on + ds_ran_on))

    def _drop_provider_near_misses(self, text: str, found: list[Finding],
                                   ran_on: list[tuple[int, int]]) -> list[Finding]:
        """A generic finding (a keyed value, high entropy) that starts with a provider's own prefix
        (``dapi``, ``ghp_``, ``xoxb-``) where no provider format matched is a near-miss of that
        format (wrong length or alphabet: a sample, a truncated or made-up key), not a generic secret:
        the provider's format decides, as ``_catalogue_disagrees`` does for detect-secrets. The same
        for a generic finding on a provider match that ran past its format's fixed length
        (``ran_on``: ``telegram_api_token = "<id>:A<36>"``, Telegram's secret part has 35)."""
        if self.catalogue is None:
            return found
        prefixes = self.catalogue.format_prefixes
        out = []
        for f in found:
            if f.type in _GENERIC_TYPES and not any(g.type not in _GENERIC_TYPES and g.start < f.end and f.start < g.end
                                                    for g in found):
                value = re.sub(r"^[\w.-]*=", "", text[f.start:f.end].lstrip("\"'`")).lower()  # NAME=value whole
                if value.startswith(prefixes) or any(a < f.end and f.start < b for a, b in ran_on):
                    continue
            out.append(f)
        return out


    def _catalogue_disagrees(self, token: str, f: Finding, found: list[Finding],
                             ran_on: list[tuple[int, int]]) -> bool:
        """Both tools know the provider (a catalogue rule is keyed on the token's own prefix:
        ``xoxb``, ``glpat-``, ``akia``) and the catalogue, whose formats are stricter and kept
        current, found nothing there: the catalogue decides (``xoxb-12345-abcd234``). Not where
        the catalogue's format matched but fixes a shorter length than the provider issues
        (``ran_on``: gitleaks' ``glagent-`` + exactly 50, GitLab's agent tokens have 50 to 1024):
        detect-secrets' length decides there."""
        if self.catalogue is None:
            return False
        low = token.lower()
        if not low.startswith(self.catalogue.prefixes):
            return False
        if any(a < f.end and f.start < b for a, b in ran_on):
            return False
        return not any(g.detector.endswith(".gitleaks") and g.type not in _GENERIC_TYPES
                       and g.start < f.end and f.start < g.end for g in found)


# findings that name no provider (as ``evals.guards_cli.GENERIC_SECRET_TYPES``)
_GENERIC_TYPES = frozenset({"PASSWORD", "HIGH_ENTROPY_STRING", "SECRET_KEYWORD", "GENERIC_API_KEY", "API_KEY"})


_ELLIPSIS = ("...", "\u2026")  # a token cut short in documentation ("eyJhbGciOi...")
# finding types whose span is a typed-in value (a password), where placeholders are common
_VALUE_TYPES = frozenset({"PASSWORD", "BEARER_TOKEN", "CREDENTIAL_IN_URL", "SQL_PASSWORD"})
_DS_VALUE_TYPES = frozenset({"SECRET_KEYWORD", "BASIC_AUTH_CREDENTIALS"})  # detect-secrets' typed-in values
_CODE_VALUE = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+|[A-Za-z_][\w.]*\(.*|.*\)")
_PLACEHOLDER_WORDS = re.compile(r"(?i)fake|dummy|example|sample|placeholder|insert|your[_-]?|[_-]here\b|changeme|"
                                r"redacted|xxxx|\*\*\*|\.\.\.|\u2026|"
                                r"not[_-]?(?:a[_-]?)?(?:real|valid|secret|password|passwd|token|key)")
# a value that spells "example" is documentation, whatever its format: AWS documents its key pair as
# AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY (gitleaks allowlists .+EXAMPLE$); seven
# letters in this order are not in a random token (about 1 in 10^9 for a 40-character base64 one)
_EXAMPLE = re.compile(r"(?i)example")
# in a random-looking token: filler words
_FILLER_WORDS = re.compile(r"(?i)fake|dummy|placeholder|your[_-]?(?:api|secret|token|key|access)|[_-]here\b|"
                           r"changeme|redacted|xxxx|\.\.\.")
_CONSTANT = re.compile(r"[A-Z][A-Z0-9]*(?:[_-][A-Z0-9]+)+|[a-z]+(?:_[a-z]+)+")  # DB_PASSWORD, new_password
_BARE_WORDS = {"password", "changeme", "example", "xxxxxx", "******", "<password>", "none", "null", "true", "false",
               "required", "optional", "string", "undefined", "secret", "redacted", "hidden", "test", "pass", "token",
               "passwd", "key", "apikey", "api_key", "user", "admin", "username", "value", "empty", "nil"}


def _looks_like_placeholder(v: str) -> bool:
    raw = v.strip("\"'")
    low = raw.lower().rstrip("=")
    return (low in _BARE_WORDS or low.strip("<>[]{}()") in _BARE_WORDS
            or low.startswith(("${", "{", "<", "[", "$(", "%(", "os.environ", "env[", "process.env", "$", "%", "@",
                               ":", "?", "getenv", "os.getenv", "system.getenv", "env.", "config.", "settings.",
                               "self.", "this.", "params.", "args.", "request."))
            or bool(_CODE_VALUE.fullmatch(raw.rstrip("=")))
            or bool(_CONSTANT.fullmatch(raw.rstrip("=")))
            or bool(_PLACEHOLDER_WORDS.search(raw))
            or _filler(raw)
            or _sequential(low)
            or bool(_COLOUR.fullmatch(raw))
            or set(low) <= {"*", "x", ".", "-", "_", "<", ">"})


_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")  # a CSS colour (``Token: '#d0d0d0'``)


def _sequential(v: str) -> bool:
    """Made of ascending runs of 3 or more (``abc123``, ``AbCeFG123``, ``12345678``): a sample value,
    as in detect-secrets' ``is_sequential_string`` filter."""
    if len(v) < 6:
        return False
    in_runs = 0
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and ord(v[j + 1]) == ord(v[j]) + 1:
            j += 1
        if j - i >= 2:
            in_runs += j - i + 1
        i = j + 1
    return in_runs >= 0.8 * len(v)


def _filler(v: str) -> bool:
    """One character makes most of the value (``hf_xxxxxxxx``, ``glc_1111...``, ``aaaa``)."""
    return len(set(v)) == 1 or len(v) >= 6 and Counter(v).most_common(1)[0][1] > 0.6 * len(v)


def not_a_token(text: str, start: int, end: int) -> bool:
    """A provider-format match whose random body reads as words (``secrets_shape.word_body``)."""
    return word_body(_token_at(text, start, end))


def _name_before(text: str, start: int) -> str:
    """The last identifier before ``start`` on its line (the name a value is assigned to)."""
    line = text[text.rfind("\n", 0, start) + 1: start]
    names = re.findall(r"[A-Za-z_][\w.-]*", line)
    return names[-1] if names else ""


def _token_at(text: str, s: int, e: int) -> str:
    """The whole token around ``text[s:e]`` (letters, digits, ``_`` and ``-``)."""
    while s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_-"):
        s -= 1
    while e < len(text) and (text[e].isalnum() or text[e] in "_-"):
        e += 1
    return text[s:e]


def _dedupe(found: list[Finding]) -> list[Finding]:
    """Keep the most specific finding per span: a provider pattern beats entropy."""
    found.sort(key=lambda f: (-f.score, f.start))
    kept: list[Finding] = []
    for f in found:
        if any(f.start < k.end and k.start < f.end for k in kept):
            continue
        kept.append(f)
    return sorted(kept, key=lambda f: f.start)
