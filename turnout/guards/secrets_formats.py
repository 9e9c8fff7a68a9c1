"""Credential formats neither gitleaks' catalogue nor detect-secrets knows (issue 25).

Each format is ``(type, pattern, score, keywords)``: the pattern runs only when one of its
keywords is in the lower-cased text (as gitleaks gates its rules); group 1, when it matched,
is the secret, else the whole match.

- SQL: ``IDENTIFIED BY '...'`` (MySQL, Oracle, also ``IDENTIFIED WITH plugin BY``),
  ``PASSWORD '...'`` in ``CREATE/ALTER USER/ROLE/LOGIN``, ``SET PASSWORD ... = '...'``,
  ``sqlplus user/password@db``, ``mysql -u root -pPASSWORD``.
- Windows hashes: pwdump / secretsdump lines ``user:rid:LM:NT:::``, John's ``$NT$`` / ``$LM$``,
  labelled NTLM hashes (mimikatz ``* NTLM : ...``), NetNTLMv1/v2 responses.
- OTP: ``otpauth://`` URIs with ``secret=`` (also URL-encoded, as in QR code links), base32
  values assigned to OTP/TOTP/MFA/2FA names, google-authenticator files.
- NATS NKEY seeds: ``S`` + a type letter (Operator, Account, User, server N, Cluster, curve X,
  P) + 56 base32 characters. Public NKEYs (no leading ``S``) are not secrets.
- Providers with a fixed prefix missing from the catalogue (Google OAuth client secrets,
  access and refresh tokens, Docker Hub, Supabase, Figma, Groq, xAI, Replicate, Pinecone,
  Tailscale, Bitbucket app passwords, OpenRouter, Stripe webhook secrets, Azure storage and
  Service Bus keys and SAS signatures, Firebase server keys, Braintree, ``sk-`` + 32 hex),
  and ``.netrc`` passwords.
"""

from __future__ import annotations

import re

_QUOTED = r"(?:N?'([^'\n]{3,128})'|\"([^\"\n]{3,128})\")"  # a quoted SQL literal
_B32 = r"[A-Z2-7]"

FORMATS: list[tuple[str, re.Pattern[str], float, tuple[str, ...]]] = [
    # --- SQL
    ("SQL_PASSWORD", re.compile(r"(?i)\bIDENTIFIED\s+(?:WITH\s+['\"`]?\w+['\"`]?\s+)?BY\s+(?:PASSWORD\s+)?" + _QUOTED),
     0.9, ("identified",)),
    # a bare literal (Oracle) only right after the user it belongs to: prose says "identified by its name"
    ("SQL_PASSWORD", re.compile(r"(?i)\b(?:USER|TO)\s+[\w\"'`@%.$#-]+\s+IDENTIFIED\s+BY\s+([^\s;'\"(),]{3,128})"),
     0.85, ("identified",)),
    ("SQL_PASSWORD", re.compile(r"(?i)\b(?:CREATE|ALTER)\s+(?:USER|ROLE|LOGIN)\b[^;\n]{0,200}?\bPASSWORD\s*=?\s*"
                                r"(?:N?'([^'\n]{3,128})'|\"([^\"\n]{3,128})\")"), 0.9, ("password",)),
    ("SQL_PASSWORD", re.compile(r"(?i)\bSET\s+PASSWORD\b[^=\n]{0,100}=\s*(?:PASSWORD\s*\(\s*)?"
                                r"(?:N?'([^'\n]{3,128})'|\"([^\"\n]{3,128})\")"), 0.9, ("password",)),
    # mysql / mysqldump / mysqladmin take the password glued to -p (a space after -p means "ask")
    ("SQL_PASSWORD", re.compile(r"\bmysql(?:dump|admin|import|show|check)?\b[^\n|;]*?\s-p(?:'([^'\n]{3,128})'|"
                                r"\"([^\"\n]{3,128})\"|([^\s'\"$-][^\s'\"]{2,127}))"), 0.9, ("mysql",)),
    ("SQL_PASSWORD", re.compile(r"(?i)\b(?:sqlplus|connect)\s+(?:-s\s+)?[\w$#]+/([^\s@/\"']{3,64})@"), 0.85,
     ("sqlplus", "connect")),
    # --- Windows password hashes
    ("NTLM_HASH", re.compile(r"(?m)^[^\s:]{1,100}:\d{1,10}:((?:[0-9A-Fa-f]{32}|NO PASSWORD\*{21}):[0-9A-Fa-f]{32}):"
                             r"[^\n]{0,200}$"), 0.95, (":::",)),
    ("NTLM_HASH", re.compile(r"\$(?:NT|LM)\$([0-9A-Fa-f]{16,32})\b"), 0.95, ("$nt$", "$lm$")),
    ("NTLM_HASH", re.compile(r"(?i)\b(?:NTLM|NT[ _-]?hash|LM[ _-]?hash|nthash|lmhash)\b[^\n]{0,40}?\s[:=]?\s*"
                             r"['\"]?([0-9A-Fa-f]{32})\b"), 0.9, ("ntlm", "hash")),
    ("NTLM_HASH", re.compile(r"(?i)\bhashcat\b[^\n]{0,40}?-m\s*(?:1000|3000)\b[^\n]{0,60}?\b([0-9a-f]{32})\b"), 0.9,
     ("hashcat",)),
    ("NETNTLM_HASH", re.compile(r"(?<![\w:])[^\s:]{1,64}::[^\s:]{0,64}:[0-9A-Fa-f]{16,48}:[0-9A-Fa-f]{32,48}:"
                                r"[0-9A-Fa-f]{16,}"), 0.95, ("::",)),
    # --- OTP secrets
    ("OTP_SECRET", re.compile(r"(?i)otpauth(?::|%3A)(?://|%2F%2F)[^\s\"'<>]*?(?:[?&]|%3F|%26)secret(?:=|%3D)"
                              r"[A-Z2-7]{8,}[^\s\"'<>]*"), 0.95, ("otpauth",)),
    ("OTP_SECRET", re.compile(r"(?<![A-Za-z0-9])(?i:[\w.-]{0,30}(?:totp|hotp|otp|mfa|2fa|two[_-]?factor|"
                              r"authenticator)[\w.-]{0,20}?)[\"']?\s*(?::=|=>|[:=])\s*[\"'`]?(" + _B32
                              + r"{16,128}=*)(?![A-Za-z0-9])"), 0.9, ("otp", "mfa", "2fa", "factor", "authenticator")),
    ("OTP_SECRET", re.compile(r"(?m)^(" + _B32 + r"{16,128})\r?\n\"\s(?:RATE_LIMIT|WINDOW_SIZE|TOTP_AUTH|"
                              r"HOTP_COUNTER|DISALLOW_REUSE|STEP_SIZE)"), 0.95, ('" ',)),
    # --- NATS NKEY seeds
    ("NKEY_SEED", re.compile(r"(?<![A-Za-z0-9])S[OANCUXP]" + _B32 + r"{56}(?![A-Za-z0-9])"), 0.95, ()),
    # --- providers missing from the catalogue
    ("GOOGLE_OAUTH_CLIENT_SECRET", re.compile(r"\bGOCSPX-[A-Za-z0-9_-]{28}(?![\w-])"), 0.95, ("gocspx-",)),
    ("GOOGLE_OAUTH_ACCESS_TOKEN", re.compile(r"\bya29\.[A-Za-z0-9_-]{30,}"), 0.95, ("ya29.",)),
    ("GOOGLE_OAUTH_REFRESH_TOKEN", re.compile(r"(?<![\w/:])1//0[A-Za-z0-9_-]{40,}"), 0.9, ("1//0",)),
    ("DOCKER_HUB_TOKEN", re.compile(r"\bdckr_(?:pat|oat)_[A-Za-z0-9_-]{24,}"), 0.95, ("dckr_",)),
    ("SUPABASE_TOKEN", re.compile(r"\bsb[pu]_[a-f0-9]{40}\b"), 0.95, ("sbp_", "sbu_")),
    ("FIGMA_TOKEN", re.compile(r"\bfig[dou]_[A-Za-z0-9_-]{40,}"), 0.95, ("figd_", "figo_", "figu_")),
    ("GROQ_API_KEY", re.compile(r"\bgsk_[A-Za-z0-9]{48,56}\b"), 0.95, ("gsk_",)),
    ("XAI_API_KEY", re.compile(r"\bxai-[A-Za-z0-9]{70,90}\b"), 0.95, ("xai-",)),
    ("REPLICATE_API_TOKEN", re.compile(r"\br8_[A-Za-z0-9]{37}\b"), 0.95, ("r8_",)),
    ("PINECONE_API_KEY", re.compile(r"\bpcsk_[A-Za-z0-9]{4,10}_[A-Za-z0-9]{40,}"), 0.95, ("pcsk_",)),
    ("TAILSCALE_KEY", re.compile(r"\btskey-(?:auth|api|client|scim|webhook)-[A-Za-z0-9]{6,}-[A-Za-z0-9]{20,}"), 0.95,
     ("tskey-",)),
    ("BITBUCKET_APP_PASSWORD", re.compile(r"\bATBB[A-Za-z0-9_=.-]{28,}"), 0.9, ("atbb",)),
    ("OPENROUTER_API_KEY", re.compile(r"\bsk-or-v1-[a-f0-9]{64}\b"), 0.95, ("sk-or-",)),
    ("STRIPE_WEBHOOK_SECRET", re.compile(r"\bwhsec_[A-Za-z0-9+/=]{32,}"), 0.95, ("whsec_",)),
    ("AZURE_STORAGE_KEY", re.compile(r"(?i)\b(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{40,88}={0,2})"), 0.95,
     ("accountkey", "sharedaccesskey")),
    ("AZURE_SAS_TOKEN", re.compile(r"[?&]sig=([A-Za-z0-9%+/]{30,}(?:%3D|=)*)"), 0.9, ("sig=",)),
    ("FIREBASE_SERVER_KEY", re.compile(r"\bAAAA[A-Za-z0-9_-]{7}:APA91b[A-Za-z0-9_-]{100,}"), 0.95, ("apa91b",)),
    ("BRAINTREE_ACCESS_TOKEN", re.compile(r"access_token\$(?:production|sandbox)\$[a-z0-9]{16}\$[a-f0-9]{32}"), 0.95,
     ("access_token$",)),
    ("API_KEY", re.compile(r"\bsk-[a-f0-9]{32}\b"), 0.85, ("sk-",)),
    ("PASSWORD", re.compile(r"(?m)^\s*machine\s+\S+(?:\s+(?:login|account)\s+\S+)*\s+password\s+(\S{3,128})"), 0.9,
     ("machine",)),
]


def format_spans(text: str, low: str | None = None) -> list[tuple[str, int, int, float]]:
    """``(type, start, end, score)`` for every format found in ``text``."""
    low = text.lower() if low is None else low
    out: list[tuple[str, int, int, float]] = []
    for typ, rx, score, keywords in FORMATS:
        if keywords and not any(k in low for k in keywords):
            continue
        for m in rx.finditer(text):
            g = next((i for i in range(1, (m.lastindex or 0) + 1) if m.group(i)), 0)
            s, e = m.span(g)
            out.append((typ, s, e, score))
    return out
