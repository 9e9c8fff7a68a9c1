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
    "public", "pub", "publishable", "csrf", "xsrf", "primary", "foreign", "sort", "partition", "cache",
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
    """A name whose words say it holds something public or derived (``public_key``, ``key_id``)."""
    words = name_words(name)
    return bool(words) and (any(w in NON_SECRET_WORDS for w in words) or words[-1] in NON_SECRET_LAST)


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
