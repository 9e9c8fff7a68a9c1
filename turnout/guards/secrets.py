"""Secret detector: provider key formats, private key blocks, credentials in URLs and
connection strings, ``password=...`` assignments, and high-entropy tokens.

Patterns follow the published formats of each provider (and the rules of gitleaks and
detect-secrets). A secret is never something to pseudonymize: policy keeps the request
off remote engines (or refuses it), so precision matters less than recall here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import TYPE_CHECKING

from turnout.guards.base import Finding

if TYPE_CHECKING:
    from turnout.config import GuardsConfig

# (type, pattern, score). Group 1, when present, is the secret itself.
PATTERNS: list[tuple[str, re.Pattern[str], float]] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
                               r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"), 1.0),
    ("AWS_ACCESS_KEY", re.compile(r"(?<![A-Z0-9])((?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)"
                                  r"[A-Z2-7]{16})(?![A-Z0-9])"), 0.98),
    ("AWS_SECRET_KEY", re.compile(r"(?i)aws.{0,20}?(?:secret|private)?.{0,10}?(?:key|token).{0,5}?[\"'=:\s]+"
                                  r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"), 0.95),
    ("GITHUB_TOKEN", re.compile(r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255})\b"), 0.99),
    ("GITHUB_TOKEN", re.compile(r"\b(github_pat_[A-Za-z0-9_]{60,255})\b"), 0.99),
    ("ANTHROPIC_API_KEY", re.compile(r"\b(sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{80,120})"), 0.99),
    ("OPENAI_API_KEY", re.compile(r"\b(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}T3BlbkFJ[A-Za-z0-9_-]{20,200})"),
     0.99),
    ("OPENAI_API_KEY", re.compile(r"\b(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,250})"), 0.95),
    ("OPENAI_API_KEY", re.compile(r"(?<![\w-])(sk-[A-Za-z0-9]{48})(?![\w-])"), 0.9),
    ("SLACK_TOKEN", re.compile(r"\b(xox[abposr]-(?:\d+-)+[A-Za-z0-9-]{10,})\b"), 0.98),
    ("SLACK_TOKEN", re.compile(r"\b(xapp-\d-[A-Z0-9]+-\d+-[a-f0-9]+)\b"), 0.98),
    ("SLACK_WEBHOOK", re.compile(r"(https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,})"), 0.98),
    ("STRIPE_KEY", re.compile(r"\b((?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,247})\b"), 0.98),
    ("STRIPE_KEY", re.compile(r"\b(whsec_[A-Za-z0-9]{24,})\b"), 0.95),
    ("GOOGLE_API_KEY", re.compile(r"\b(AIza[0-9A-Za-z_-]{35})(?![0-9A-Za-z_-])"), 0.98),
    ("GOOGLE_OAUTH_SECRET", re.compile(r"\b(GOCSPX-[A-Za-z0-9_-]{28})\b"), 0.98),
    ("GOOGLE_OAUTH_TOKEN", re.compile(r"\b(ya29\.[0-9A-Za-z_-]{20,})"), 0.95),
    ("GOOGLE_SERVICE_ACCOUNT", re.compile(r"\"type\"\s*:\s*\"service_account\""), 0.9),
    ("HUGGINGFACE_TOKEN", re.compile(r"\b(hf_[A-Za-z0-9]{34,40})\b"), 0.97),
    ("GITLAB_TOKEN", re.compile(r"\b(glpat-[A-Za-z0-9_-]{20,})\b"), 0.98),
    ("NPM_TOKEN", re.compile(r"\b(npm_[A-Za-z0-9]{36})\b"), 0.97),
    ("TWILIO_KEY", re.compile(r"\b(SK[0-9a-fA-F]{32})\b"), 0.8),
    ("SENDGRID_KEY", re.compile(r"\b(SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})\b"), 0.98),
    ("AZURE_STORAGE_KEY", re.compile(r"AccountKey=([A-Za-z0-9+/=]{60,100})"), 0.95),
    ("JWT", re.compile(r"\b(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"), 0.95),
    ("CREDENTIAL_IN_URL", re.compile(r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:([^\s@/]{1,128})@[^\s/]+"), 0.95),
    ("PASSWORD", re.compile(r"(?i)\b(?:password|passwd|pwd|pass|secret|api[_-]?key|apikey|access[_-]?token|"
                            r"auth[_-]?token|client[_-]?secret|token)\b[\"']?\s*[:=]\s*[\"']?([^\s\"';,&]{6,200})"), 0.85),
    ("PASSWORD", re.compile(r"(?i)\b(?:my|the|our)\s+(?:password|passcode|pin)\s+(?:is|was|=|:)\s*[\"']?([^\s\"']{4,128})"),
     0.85),
    ("BEARER_TOKEN", re.compile(r"(?i)\bauthorization\s*:\s*(?:bearer|basic|token)\s+([A-Za-z0-9._~+/=-]{16,})"), 0.9),
]

_CANDIDATE = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{24,200}(?![A-Za-z0-9+/_=-])")
_HEX = re.compile(r"[0-9a-fA-F]+")


def shannon_entropy(s: str) -> float:
    """Bits per character."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def high_entropy(token: str) -> bool:
    """detect-secrets style: long, mixed, and random-looking. Hex strings (hashes, ids)
    and words joined by dashes are excluded unless very random."""
    if len(token) < 24 or "//" in token:
        return False
    classes = sum(bool(re.search(p, token)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    if classes < 3:
        return False
    if re.fullmatch(r"[A-Za-z]+(?:[-_][A-Za-z]+)+", token):
        return False
    if _HEX.fullmatch(token):
        return shannon_entropy(token) > 3.9 and len(token) >= 40
    digits = sum(c.isdigit() for c in token)
    return shannon_entropy(token) >= 4.2 and 0 < digits < len(token) * 0.8


class SecretsGuard:
    """Detect credentials. Stateless and cheap (regular expressions only)."""

    name = "secrets"
    kinds = ("secret",)
    config_model = None
    scans_output = True

    @classmethod
    def from_config(cls, cfg: GuardsConfig, options: None) -> SecretsGuard:
        """Built by ``guards.detectors``; scans answers too (an output guard)."""
        return cls()


    def __init__(self, *, entropy: bool = True) -> None:
        self.entropy = entropy

    def inspect(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        for typ, rx, score in PATTERNS:
            for m in rx.finditer(text):
                s, e = (m.start(1), m.end(1)) if m.groups() and m.group(1) else (m.start(), m.end())
                if typ == "PASSWORD" and _looks_like_placeholder(text[s:e]):
                    continue
                found.append(Finding("secret", typ, s, e, score, f"{self.name}.pattern"))
        if self.entropy:
            for m in _CANDIDATE.finditer(text):
                if high_entropy(m.group(0)):
                    found.append(Finding("secret", "HIGH_ENTROPY_STRING", m.start(), m.end(), 0.6,
                                         f"{self.name}.entropy"))
        return _dedupe(found)


def _looks_like_placeholder(v: str) -> bool:
    low = v.lower().strip("\"'")
    return (low in {"password", "changeme", "example", "xxxxxx", "******", "<password>", "none", "null", "true",
                    "false", "required", "optional", "string"}
            or low.startswith(("${", "{{", "<", "$(", "%(", "os.environ", "env[", "process.env"))
            or set(low) <= {"*", "x", "."})


def _dedupe(found: list[Finding]) -> list[Finding]:
    """Keep the most specific finding per span: a provider pattern beats entropy."""
    found.sort(key=lambda f: (-f.score, f.start))
    kept: list[Finding] = []
    for f in found:
        if any(f.start < k.end and k.start < f.end for k in kept):
            continue
        kept.append(f)
    return sorted(kept, key=lambda f: f.start)
