"""Pattern recognisers: checksummed numbers, contact details, dates, ages, titles."""

from __future__ import annotations

import re
from typing import Any

from turnout.guards.pii_lexicon import (
    _TITLE_RE,
    MONTHS,
    NATIONALITIES,
    WEEKDAYS,
    Cand,
    _ctx_before,
    _lower_lexicon,
    _occupation_head,
    lexicon,
)

# --------------------------------------------------------------------------- checksums


def luhn_valid(number: str) -> bool:
    """Luhn (mod 10) check over the digits of ``number``; separators are ignored."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: known country length and mod-97 remainder 1."""
    s = re.sub(r"[\s-]", "", iban).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}", s):
        return False
    if IBAN_LENGTHS.get(s[:2], len(s)) != len(s):
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# --------------------------------------------------------------------------- pattern recognisers

_EMAIL = re.compile(r"\b[\w.%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+[^\s<>\"').,;:!?\]]/?", re.IGNORECASE)
_DOMAIN = re.compile(
    r"(?<![@\w.-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:com|org|net|edu|gov|io|ai|info|biz|co|app|dev|me|tv|xyz|online|site|shop|[a-z]{2})(?:\.[a-z]{2})?"
    r"(?:/[^\s<>\"']*)?(?![\w@-])"
)
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){11,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])(\d{3})[- ](\d{2})[- ](\d{4})(?![\d-])")
_SSN_BARE = re.compile(r"(?<!\d)\d{9}(?!\d)")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                   r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]\d)")
_IPV6 = re.compile(r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|[0-9A-Fa-f]{1,4})(?![:\w])")
_PHONE = re.compile(
    r"(?<![\w+/-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{1,5}(?:[ \t.-]\d{1,8}){1,5}"
    r"(?:\s?(?:x|ext\.?|#)\s?\d{1,5})?(?![\w/]|-\d)"
)
_PHONE_PLAIN = re.compile(r"(?<![\w+/-])\+?\d{8,15}(?![\w/]|-\d)")
_DATE = re.compile(
    r"\b(?:\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?"
    r"|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}"
    r"|\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:" + "|".join(MONTHS) + r")\.?(?:,?\s+\d{4})?"
    r"|(?:" + "|".join(MONTHS) + r")\.?\s+\d{1,2}(?:st|nd|rd|th)?(?:,?\s+\d{4})?"
    r"|(?:" + "|".join(MONTHS[:12]) + r")\s+\d{4}"
    r"|\d{1,2}:\d{2}(?::\d{2})?\s?(?:am|pm)?)\b",
    re.IGNORECASE,
)
_YEAR_CTX = re.compile(r"\b(?:in|since|during|of|from|until|till|by|year|a|an|the)\s+"
                       r"((?:19|20)\d{2})\b(?!\s*(?:%|km|kg))", re.IGNORECASE)
_WEEKDAY = re.compile(r"\b(?:" + "|".join(WEEKDAYS) + r")\b", re.IGNORECASE)
_AGE = re.compile(
    r"(?:\b(\d{1,3})[- ](?:years?|yrs?)[- ]old\b|\b(\d{1,3})\s?(?:y/o|yo)\b"
    r"|\b(?:age(?:d| of)?|turn(?:ed|s|ing)?|i'?m|i am|is|was)\s+(\d{1,3})\b(?!\s*(?:%|\$|am|pm|:|\.\d|,\d|/|"
    r"dollars|euros|percent|minutes|hours|days|weeks|months|times|km|kg|items|people|songs)))",
    re.IGNORECASE,
)
_ZIP_CTX = re.compile(r"\b(?:zip code|zipcode|zip|postal code|postcode|post code|plz)\s*(?:is|:|#)?\s*"
                      r"([A-Z0-9]{3,10}(?:[ -][A-Z0-9]{3,4})?)\b", re.IGNORECASE)
_DL_CTX = re.compile(r"\b(?:driver'?s?|driving)\s+licen[cs]e(?:\s+(?:number|no\.?|#))?\s*(?:is|:|#)?\s*"
                     r"([A-Z0-9][A-Z0-9-]{4,18})\b", re.IGNORECASE)
_TITLE_NAME = re.compile(r"(?<![\w.])(" + _TITLE_RE + r")(?=\s+[A-Z])")


def _emails(text: str, doc: Any) -> list[Cand]:
    return [Cand(m.start(), m.end(), "EMAIL_ADDRESS", 1.0, "regex") for m in _EMAIL.finditer(text)]


def _urls(text: str, doc: Any) -> list[Cand]:
    out = [Cand(m.start(), m.end(), "URL", 0.95, "regex") for m in _URL.finditer(text)]
    for m in _DOMAIN.finditer(text):
        v = m.group(0)
        labels = v.split("/")[0].split(".")
        # bare domains need a label of 3+ chars and not look like "e.g." or a file name
        if (len(labels) >= 2 and max(len(x) for x in labels[:-1]) >= 3
                and not v.split("/")[0].replace(".", "").isdigit()):
            out.append(Cand(m.start(), m.end(), "URL", 0.7, "regex"))
    return out


def _cards(text: str, doc: Any) -> list[Cand]:
    out = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 12 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            out.append(Cand(m.start(), m.end(), "CREDIT_CARD", 0.98, "luhn"))
    return out


def _ibans(text: str, doc: Any) -> list[Cand]:
    out = []
    for m in _IBAN.finditer(text):
        v = m.group(0)
        # the greedy match may have taken a trailing word: shrink until it validates
        for end in range(len(v), 14, -1):
            if iban_valid(v[:end]):
                out.append(Cand(m.start(), m.start() + len(v[:end].rstrip()), "IBAN_CODE", 1.0, "mod97"))
                break
    return out


def _ssns(text: str, doc: Any) -> list[Cand]:
    out = []
    for m in _SSN.finditer(text):
        area, group, serial = m.groups()
        if area in ("000", "666") or group == "00" or serial == "0000":
            continue
        ctx = re.search(r"ssn|social security|tax id", _ctx_before(text, m.start(), 60))
        sep_ok = m.group(0)[3] == m.group(0)[6]
        if sep_ok:
            out.append(Cand(m.start(), m.end(), "US_SSN", 0.95 if ctx else 0.75, "regex"))
    for m in _SSN_BARE.finditer(text):
        if re.search(r"ssn|social security", _ctx_before(text, m.start(), 40)):
            out.append(Cand(m.start(), m.end(), "US_SSN", 0.9, "context"))
    return out


def _ips(text: str, doc: Any) -> list[Cand]:
    out = [Cand(m.start(), m.end(), "IP_ADDRESS", 0.97, "regex") for m in _IPV4.finditer(text)]
    for m in _IPV6.finditer(text):
        if m.group(0).count(":") >= 3 or "::" in m.group(0):
            out.append(Cand(m.start(), m.end(), "IP_ADDRESS", 0.9, "regex"))
    return out


def _phones(text: str, doc: Any) -> list[Cand]:
    out = []
    for rx, base in ((_PHONE, 0.6), (_PHONE_PLAIN, 0.4)):
        for m in rx.finditer(text):
            v = m.group(0).strip()
            core = re.split(r"\s?(?:x|ext\.?|#)\s?\d", v, maxsplit=1)[0]
            digits = re.sub(r"\D", "", core)
            if not 6 <= len(digits) <= 15:
                continue
            ctx = re.search(r"phone|call|tel|mobile|cell|fax|desk|office|number|contact|reach|text|sms|whatsapp",
                            _ctx_before(text, m.start(), 50) + text[m.end():m.end() + 12].lower())
            if len(digits) < 8 and not ctx and not v.startswith("+"):
                continue
            if re.match(r"[ \t]+[^\W\d_]", text[m.start() + len(v):]) and not ctx:
                continue  # "66029 138 Consul Place": numbers that lead into a street name
            score = base + (0.3 if ctx else 0.0) + (0.1 if v.startswith("+") else 0.0)
            out.append(Cand(m.start(), m.start() + len(v), "PHONE_NUMBER", min(score, 0.95), "regex"))
    return out


def _dates(text: str, doc: Any) -> list[Cand]:
    out = [Cand(m.start(), m.end(), "DATE_TIME", 0.85, "regex") for m in _DATE.finditer(text)]
    out += [Cand(m.start(1), m.end(1), "DATE_TIME", 0.7, "regex") for m in _YEAR_CTX.finditer(text)]
    out += [Cand(m.start(), m.end(), "DATE_TIME", 0.6, "regex") for m in _WEEKDAY.finditer(text)]
    return out


def _ages(text: str, doc: Any) -> list[Cand]:
    out = []
    for m in _AGE.finditer(text):
        g = next(i for i in (1, 2, 3) if m.group(i))
        v = int(m.group(g))
        if v > 125:
            continue
        lead = m.group(0).lower()
        # "I'm 5", "is 20": weak unless the sentence talks about age
        weak = g == 3 and not re.match(r"age|turn", lead)
        if weak and not re.search(r"\bage\b|\bold\b|birthday|born|y/o", text[max(0, m.start() - 60):m.end() + 30],
                                  re.IGNORECASE):
            continue
        out.append(Cand(m.start(g), m.end(g), "AGE", 0.8, "context"))
    return out


def _zips(text: str, doc: Any) -> list[Cand]:
    return [Cand(m.start(1), m.end(1), "ZIP_CODE", 0.85, "context") for m in _ZIP_CTX.finditer(text)
            if any(c.isdigit() for c in m.group(1))]


def _licences(text: str, doc: Any) -> list[Cand]:
    return [Cand(m.start(1), m.end(1), "US_DRIVER_LICENSE", 0.9, "context") for m in _DL_CTX.finditer(text)
            if any(c.isdigit() for c in m.group(1))]


_CAPITAL_NEXT = re.compile(r"[ \t]+[A-Z][a-z]")


def _nrp(text: str, doc: Any) -> list[Cand]:
    out = []
    for m in re.finditer(r"\b[^\W\d_]{3,}\b", text):
        w = m.group(0).lower()
        base = w
        for suf in ("es", "s"):
            if base not in NATIONALITIES and w.endswith(suf) and w[: -len(suf)] in NATIONALITIES:
                base = w[: -len(suf)]
        before = text[max(0, m.start() - 30):m.start()].lower()
        if re.search(r"(?:\(|\b(?:studying|study|speaks?|speaking|learn|learning|into|translated? (?:to|into)))\s*$",
                     before):
            continue  # a language, or "Cyprus (Greek)"
        if base in NATIONALITIES and not _CAPITAL_NEXT.match(text, m.end()):  # not text[m.end():] (quadratic)
            out.append(Cand(m.start(), m.end(), "NRP", 0.75, "lexicon"))
    return out


def _titles(text: str, doc: Any) -> list[Cand]:
    out = [Cand(m.start(1), m.end(1), "TITLE", 0.8, "regex") for m in _TITLE_NAME.finditer(text)]
    jobs = lexicon("jobs")
    # occupations: "as a <job>", "the <job>," and a line of its own in a signature
    for m in re.finditer(r"(?:\b(?:as an?|as|the|works? as an?|is an?)\s+|^\s*|\n\s*)"
                         r"([A-Za-z][A-Za-z'-]*(?:,? (?:and )?[A-Za-z][A-Za-z'-]*){0,4})(?=\s*(?:[,.\n]|$))",
                         text, re.MULTILINE):
        phrase = m.group(1)
        low = phrase.lower()
        words = low.replace(",", "").split()
        own_line = not m.group(0)[:1].isalpha() and text[m.end(1):m.end(1) + 1] in ("\n", "")
        if low in jobs or (len(words) >= 1 and _occupation_head(words[-1]) and (own_line or
                           all(w not in _lower_lexicon("common_words") or w in ("and",) or _occupation_head(w)
                               for w in words[:-1]))):
            out.append(Cand(m.start(1), m.end(1), "TITLE", 0.7 if low in jobs else 0.55, "lexicon"))
    return out


