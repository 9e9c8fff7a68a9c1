"""When is a random-looking string a secret? Only with supporting context (issue 25).

A high-entropy token alone is not a secret: code, lockfiles, source maps and binaries are
full of them (hashes, ids, nonces, base64 test vectors). It counts when

- it is assigned to a secret-like name (``api_key = ...``, ``"clientSecret": ...``,
  ``X-Api-Key: ...``, ``--auth-token ...``), in any case or separator style;
- it starts with a credential-like prefix (``sk-``, ``key_``, ...); or
- a credential word is nearby on its line (prose: "the staging token is ...").

A name is split into words (``clientSecretKey`` -> client, secret, key). Modifiers such as
``public``, ``csrf``, ``primary`` or ``next`` and last words such as ``id``, ``hash``,
``name`` or ``url`` make it a non-secret name (gitleaks' generic allowlist has the same idea).
"""

from __future__ import annotations

import re

SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "pass", "passphrase", "passcode", "secret", "secrets", "token", "key", "apikey",
    "credential", "credentials", "creds", "auth", "authorization", "bearer", "private", "seed", "signing",
})
# substrings of one word written without separators (apikey, authtoken, clientsecret, dbpasswd)
SECRET_PARTS = ("passw", "passwd", "secret", "token", "apikey", "credential", "privatekey", "accesskey",
                "signingkey", "authkey", "pwd")
# a word that makes the whole name something other than a secret
NON_SECRET_WORDS = frozenset({
    "public", "pub", "publishable", "csrf", "xsrf", "authenticity", "primary", "foreign", "sort", "partition", "cache",
    "idempotency", "next", "page", "pagination", "continuation", "cancellation", "sync", "tokenizer", "tokenize",
    "tokens", "tokenized", "keyboard", "hotkey", "monkey", "turkey", "jsonwebtoken", "author", "authors", "keys",
    "nonce", "salt", "checksum", "integrity", "fingerprint", "thumbprint", "digest", "sha", "md5",
})
# a last word that names a property of a secret, not the secret
NON_SECRET_LAST = frozenset({
    "id", "ids", "hash", "name", "names", "length", "len", "size", "type", "file", "path", "url", "uri", "endpoint",
    "event", "down", "up", "alias", "store", "board", "code", "version", "count", "index", "prefix", "format",
    "field", "label", "mesh", "pair", "ring", "word", "policy", "expiry", "expires", "ttl", "timeout", "header",
    "env", "var", "param", "location", "dir", "hint", "required", "enabled", "mode",
})
# a name that says its value is made up (test fixtures, docs): ``fakeToken``, ``dummy_password``,
# ``invalidKey``, ``nonMatchingToken``, ``EXAMPLE_SECRET``. "test" alone is not one: CI passwords are real.
MADE_UP_PARTS = ("fake", "dummy", "mock", "bogus", "invalid", "wrong", "placeholder", "example", "sample",
                 "nonmatching", "notmatching", "notreal")
# a name that starts by denying it (``not_secret``, ``NO_PASSWORD``, ``nonSecretKey``)
NEGATIONS = frozenset({"not", "no", "non"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_IDENT = re.compile(r"[A-Za-z_$@][\w$@.-]*")
# a credential-like prefix on the token itself
_PREFIX = re.compile(r"(?i)(?:sk|rk|key|api|apikey|secret|token|tok|pat|sec|auth)[-_]")
_NAMED = re.compile(r"([A-Za-z_][\w.-]*)=(?!=)")
_HARD_STOP = re.compile(r"[;{}()<>|]")
# long sequential runs: alphabets and digit tables (``ABCDEFGH...``), never a secret
_SEQUENTIAL = re.compile(r"(?i)abcdefgh|bcdefghi|01234567|12345678|qwertyui")


def name_words(name: str) -> list[str]:
    """``clientSecret_KEY`` -> ['client', 'secret', 'key']."""
    return [w.lower() for w in _WORDS.findall(name)]


def non_secret_name(name: str) -> bool:
    """A name whose words say it holds something public or derived (``public_key``, ``key_id``),
    or something made up (``fake_token``: ``MADE_UP_PARTS``)."""
    words = name_words(name)
    if not words:
        return False
    joined = "".join(words)
    return (any(w in NON_SECRET_WORDS for w in words) or words[-1] in NON_SECRET_LAST
            or any(p in joined for p in MADE_UP_PARTS) or words[0] in NEGATIONS)


def secret_name(name: str) -> bool:
    """``api_key``, ``clientSecret``, ``X-Auth-Token``, ``DBPASSWD``: yes; ``public_key``, ``key_id``: no."""
    words = name_words(name)
    if not words or non_secret_name(name):
        return False
    return any(w in SECRET_WORDS or any(p in w for p in SECRET_PARTS) for w in words)


def _window(text: str, start: int, width: int = 80) -> str:
    """Up to ``width`` characters before ``start`` on its line; the previous line too when the
    token opens its line (a value under its label)."""
    a = text.rfind("\n", 0, start) + 1
    before = text[max(a, start - width): start]
    if not before.strip(" \t\"'`") and a > 0:
        p = text.rfind("\n", 0, a - 1) + 1
        before = text[max(p, a - 1 - width): a - 1] + " "
    return before


def has_context(text: str, start: int, end: int) -> bool:
    """Whether the token at ``text[start:end]`` has supporting context for being a secret."""
    token = text[start:end]
    if _SEQUENTIAL.search(token):
        return False
    named = _NAMED.match(token)
    if named:  # name=value read as one token (query strings, .env lines)
        if secret_name(named.group(1)):
            return True
        if non_secret_name(named.group(1)):
            return False
        token = token[named.end():]
    if _PREFIX.match(token):
        return True
    before = _window(text, start)
    cut = max((m.end() for m in _HARD_STOP.finditer(before)), default=0)
    tail = before[cut:]
    names = _IDENT.findall(tail)
    if not names:
        return False
    if non_secret_name(names[-1]):  # the name right before the value decides when it says "not a secret"
        return False
    return any(secret_name(n) for n in names)


# code, not a literal: keywords, and the last word of a type or class name (``ClientSecret``, ``TokenOpt``)
_KEYWORDS = frozenset({"return", "not", "await", "yield", "lambda", "new", "self", "this", "function", "async",
                       "typeof", "None", "nil"})
TYPE_LAST = frozenset({"secret", "secrets", "token", "key", "password", "credential", "credentials", "type", "opt",
                       "opts", "interface", "provider", "param", "params", "config", "options", "model", "info",
                       "response", "request", "handler", "manager", "factory", "store", "error", "exception"})
_LETTERS = re.compile(r"[A-Za-z_]+")
_NAMEISH = re.compile(r"[A-Za-z]+(?:[-_.][A-Za-z]+)+")  # letters and separators only: my-client-secret
_PROSE_AFTER = re.compile(r" [a-z]+ [a-z]+\b")  # two more lower-case words follow on the line
_CALL = re.compile(r"[A-Za-z_][\w.]*[\[()]")  # a name and a bracket: tokens[i], Optional[str], get(), Iface):


def code_value(text: str, name_start: int, start: int, end: int) -> bool:
    """Whether the value ``text[start:end]`` assigned to the name at ``name_start`` is code or a
    constant naming itself rather than a literal secret (issue 25: negative files in code).

    - the value repeats the name (``BYPASS = "bypass"``, ``OTP_CREDENTIALS = "otp-credentials"``):
      an enum member; or words ending in the name's last word (``client_secret="my-client-secret"``):
      a placeholder;
    - unquoted, a name and a bracket: a call, subscript or generic type (``token = tokens[i]``,
      ``token: Optional[str]``);
    - unquoted letters only: a keyword (``return``), a private name (``_style``), a type annotation
      (followed by ``=``, ``|`` or ``)``: ``token: TokenOpt = None``), a class whose last word
      names what it holds (``secret: PotentialSecret``), a word followed by more prose
      ("client_secret: Configuration options for ..."), or a lower-case word in prose
      ("a single pass: adjacent ...", "the worker's standing credential: polling").

    A quoted value is a literal whatever it looks like; an unquoted value with digits or
    symbols (``PASSWORD=hunter2``) is never code here.
    """
    value = text[start:end]
    line_start = text.rfind("\n", 0, name_start) + 1
    names = _IDENT.findall(text[name_start:start])
    name = name_words(names[-1]) if names else []
    vw = name_words(value)
    if vw and name and (name[-len(vw):] == vw or len(vw) > 1 and vw[-1] == name[-1] and _NAMEISH.fullmatch(value)):
        return True
    if start > 0 and text[start - 1] in "\"'`":
        return False
    if _CALL.match(value):
        return True
    if not _LETTERS.fullmatch(value):
        return False
    if value.startswith("_") or value in _KEYWORDS:
        return True
    if text[end: end + 40].lstrip(" \t")[:1] in ("=", "|", ")"):
        return True
    if value[0].isupper() and vw and vw[-1] in TYPE_LAST:
        return True
    if _PROSE_AFTER.match(text, end):  # "client_secret: Configuration options for the ..."
        return True
    return value.islower() and (name == ["pass"] or len(_LETTERS.findall(text[line_start:name_start])) >= 3)
