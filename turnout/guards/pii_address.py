"""Postal addresses: street lines (number first or name first), units, military
addresses, and the city / state / country / zip lines that follow."""

from __future__ import annotations

import re
from typing import Any

from turnout.guards.pii_lexicon import (
    _WORD,
    LABELS,
    STREET_ENDINGS,
    STREET_SUFFIXES,
    STREET_WORDS,
    UNIT_RE,
    Cand,
    _lower_lexicon,
    lexicon,
    words,
)

# --------------------------------------------------------------------------- addresses

_NUM = r"\d{1,6}[A-Za-z]?\b"
_CAPW = r"(?:[^\W\d_a-z][\w'’.-]*|(?:de|do|da|dos|das|del|dei|della|di|du|des|la|le|van|von|der|den|het|ul|al|u|gate|"\
        r"tér|út|utca|vej|gade|iela|rue|via|calle|rua|av)\.?(?=[ \t]))"
_STREET_NUM_FIRST = re.compile(
    r"(?<![\w.,-])" + _NUM + r"(?:[ \t]+" + _NUM + r")?(?:[ \t]+" + _WORD + r"){1,6}(?:[ \t]+" + _NUM + r"\.?)?"
    r"(?:,?[ \t]+" + UNIT_RE + r")*",
    re.UNICODE,
)
_STREET_NAME_FIRST = re.compile(
    r"(?<![\w.-])(?:" + _CAPW + r"[ \t]+){0,3}(?:" + _CAPW + r"|[^\W\d_]+(?:" + "|".join(STREET_ENDINGS) + r"))"
    r"[ \t]+" + _NUM + r"\.?(?:,?[ \t]+" + UNIT_RE + r")*",
    re.UNICODE,
)
_UNIT_ONLY = re.compile(r"(?<![\w.])" + UNIT_RE + r"\b", re.IGNORECASE)
_MILITARY = re.compile(
    r"\b(?:(?:USNS|USNV|USS|USCGC)\s+[A-Z][a-z]+|(?:PSC|Unit)\s+\d{3,5},?\s+Box\s+\d{3,5})"
    r"\s*\n?\s*[AFD]PO\s+A[AEP]\s+\d{5}\b"
)
_SEG = re.compile(r"[ \t]*(?:\n+[ \t]*,?|,[ \t]*\n?)[ \t>?*•|-]*|[ \t]+")
_ADDR_CTX = re.compile(r"(?:\b(?:at|on|of|to|in|into|address(?:es)?|is|live[sd]?|located|sent|send|corner|near|"
                       r"and|from)|[:,\n>])\s*$", re.IGNORECASE)
_PARTICLES = frozenset(words("""
de do da dos das del dei della di du des la le van von der den het
"""))


def _street_marks(words: list[str]) -> tuple[bool, bool, bool]:
    low = [w.lower().strip(".,") for w in words]
    has_suffix = any(w in STREET_SUFFIXES or w in STREET_WORDS or w + "." in STREET_WORDS for w in low[1:] + low[:1]
                     if not w.isdigit())
    has_ending = any(w.endswith(STREET_ENDINGS) and len(w) >= 4 for w in low)
    has_unit = bool(re.search(UNIT_RE, " ".join(words), re.IGNORECASE))
    return has_suffix, has_ending, has_unit


def _trim_tail(text: str, s: int, e: int) -> int:
    """Drop trailing lowercase common words ("24 Clarke Avenue after the concert")."""
    common = _lower_lexicon("common_words")
    while True:
        v = text[s:e]
        m = re.search(r"[ \t]+([^\s]+)$", v)
        if not m:
            return e
        w = m.group(1).strip(".,")
        lw = w.lower()
        if (w[:1].islower() and (lw in common or lw in _PARTICLES) and lw not in STREET_SUFFIXES
                and lw not in STREET_WORDS) or w in ("and", "or", "street"):
            e = s + m.start()
            continue
        return e


def _addresses(text: str, doc: Any) -> list[Cand]:
    out: list[Cand] = []
    places = lexicon("places")
    common = _lower_lexicon("common_words")
    for mil in _MILITARY.finditer(text):
        out.append(Cand(mil.start(), mil.end(), "STREET_ADDRESS", 0.95, "regex"))
    starts = [m.start() for m in re.finditer(r"(?<![\w.,-])\d", text)]
    taken_to = -1
    for st in starts:
        if st < taken_to:
            continue
        m = _STREET_NUM_FIRST.match(text, st)
        if not m:
            continue
        s = m.start()
        e = _trim_tail(text, s, m.end())
        words = text[s:e].rstrip(".").split()
        alpha = [w for w in words if re.match(r"[^\W\d_]", w)]
        if not alpha:
            continue
        has_suffix, has_ending, has_unit = _street_marks(words)
        ends_num = bool(re.match(r"\d", words[-1])) and len(words) >= 3
        # "<number> <Name...> <number>" (European) or a capitalised/non-Latin name after the number
        named = all(not w[:1].islower() or w.lower() in _PARTICLES for w in alpha) and not all(
            w.lower() in common for w in alpha)
        if any(w in ("Of", "The", "And", "To", "In", "For", "A") for w in alpha) and not has_suffix:
            continue
        if not (has_suffix or has_ending or has_unit or (ends_num and named)):
            continue
        e = s + len(text[s:e].rstrip(".")) if not re.search(r"\d\.$", text[s:e]) else e
        e = _extend_address(text, e, places)
        taken_to = e
        out.append(Cand(s, e, "STREET_ADDRESS", 0.9, "address"))
    for m in _STREET_NAME_FIRST.finditer(text):
        s, e = m.start(), m.end()
        words = text[s:e].split()
        # drop leading words that are sentence words, not part of the street name
        while len(words) > 2 and words[0].lower() in common and words[0].lower() not in STREET_WORDS:
            s = text.index(words[1], s + len(words[0]))
            words = words[1:]
        um = re.search(UNIT_RE, text[s:e], re.IGNORECASE)
        if um and not re.search(r"\d", text[s:s + um.start()]):
            s += um.start()  # "Mrs. Jennifer Alcaraz Suite 541": the unit alone is the address part
            words = text[s:e].split()
        alpha = [w for w in words if re.match(r"[^\W\d_]", w)]
        if not alpha or all(w.lower() in common for w in alpha):
            continue
        has_suffix, has_ending, has_unit = _street_marks(words)
        ctx = bool(_ADDR_CTX.search(text[max(0, s - 30):s])) or s == 0
        nxt = text[e:e + 40]
        follows = bool(re.match(r"[ \t]*(?:,|\n)[ \t>]*(?:" + UNIT_RE + r"|[^\W\d_])", nxt, re.IGNORECASE))
        if not (has_suffix or has_ending or has_unit or (ctx and (follows or len(words[-1].strip(".")) >= 2))):
            continue
        e = _extend_address(text, e, places)
        strict = (bool(re.search(r"\b(?:at|on|address(?:es)?|located at|lives? at|to)\s*:?\s*$",
                                 text[max(0, s - 20):s], re.IGNORECASE))
                  and re.search(r"\d\d\.?$", text[s:e].split("\n")[0]))
        # "on Peter Zuidhove 188": a street named after a person outranks the name inside it
        score = 0.95 if strict else 0.85 if (has_suffix or has_ending or has_unit) else 0.7
        out.append(Cand(s, e, "STREET_ADDRESS", score, "address"))
    for m in _UNIT_ONLY.finditer(text):
        if m.group(0).startswith("#"):
            continue
        out.append(Cand(m.start(), m.end(), "STREET_ADDRESS", 0.75, "address"))
    return _merge_adjacent(text, out)


def _merge_adjacent(text: str, cands: list[Cand]) -> list[Cand]:
    """Join address pieces separated only by blanks or commas into one finding."""
    cands = sorted(cands, key=lambda c: (c.start, -c.end))
    merged: list[Cand] = []
    for c in cands:
        if merged and c.start <= merged[-1].end + 3 and re.fullmatch(r"[\s,]*", text[merged[-1].end:c.start] or ""):
            last = merged[-1]
            last.end = max(last.end, c.end)
            last.score = max(last.score, c.score)
        else:
            merged.append(Cand(c.start, c.end, c.type, c.score, c.source))
    return merged


# matched where they stand (pattern.match(text, pos)): slicing text[pos:] for each address was
# quadratic in a long prompt (issue 23, H1); a segment is read only as far as a place name can run
_UNIT_AT = re.compile(UNIT_RE, re.IGNORECASE)
_SEGMENT = re.compile(r"[^\n,]{0,256}")
_ZIP_NEXT = re.compile(r"[ \t]*\n?[ \t]*\d{3,6}\b")
_CONT_TOKEN = re.compile(r"\(?[^\W_][\w'’.()-]*\)?", re.UNICODE)


def _extend_address(text: str, end: int, places: frozenset[str]) -> int:
    """Extend an address over following city / state / country / zip segments."""
    common = _lower_lexicon("common_words")
    pos = end
    after_zip = bool(re.search(r"\d{4,6}$", text[max(0, end - 7):end]))  # not text[:end]: quadratic
    for _ in range(8):
        sep = _SEG.match(text, pos)
        if not sep:
            break
        tok = _CONT_TOKEN.match(text, sep.end())
        if not tok:
            break
        t = tok.group(0).rstrip(".,")
        if not t:
            break
        hard_sep = "," in sep.group(0) or "\n" in sep.group(0)
        is_zip = bool(re.fullmatch(r"\d{4,6}(?:-\d{3,4})?|[A-Z]\d[A-Z] ?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}", t))
        low = t.lower().strip("()")
        if (low in common and t[:1].islower()) or low in LABELS:
            break
        if after_zip and not (t in places or (t.isupper() and len(t) >= 2)):
            break
        if re.search(r":$", tok.group(0)) or text[tok.end():tok.end() + 1] == ":":
            break
        unit = _UNIT_AT.match(text, sep.end())
        if unit:
            pos = unit.end()
            continue
        # a multi-word place ("South Africa", "New Zealand") up to the end of the segment
        seg = _SEGMENT.match(text, sep.end())
        line = seg.group(0) if seg else ""
        words = line.split()
        multi = next((k for k in range(min(4, len(words)), 1, -1) if " ".join(words[:k]) in places), 0)
        if multi:
            pos = text.index(words[multi - 1], sep.end()) + len(words[multi - 1])
            continue
        # a state code or placeholder before a zip ("FAUSKE nan 8200", "Wrocław\n nan\n 53-320")
        if re.fullmatch(r"[a-z]{2,4}", t) and _ZIP_NEXT.match(text, tok.end()):
            pos = sep.end() + len(t)
            continue
        ok = (
            is_zip
            or t in places
            or t.strip("()") in places
            or (t.isupper() and len(t) >= 2 and not t.isdigit())
            or (hard_sep and (t[:1].isupper() or not t.isascii()) and low not in common)
            or (hard_sep and re.fullmatch(r"[a-z][\w-]+", t) is not None and low not in common and len(t) > 3)
            or (not hard_sep and t[:1].isupper() and low not in common
                and _next_is_place_or_zip(text, tok.end(), places))
        )
        if not ok:
            break
        pos = sep.end() + len(t)
        after_zip = after_zip or is_zip
    return pos


def _next_is_place_or_zip(text: str, pos: int, places: frozenset[str]) -> bool:
    m = re.match(r"[ \t,]*\n?[ \t]*(\(?[^\W_][\w'’.()-]*)", text[pos:pos + 40])
    if not m:
        return pos >= len(text.rstrip(" .?!"))
    t = m.group(1).rstrip(".,")
    return bool(re.fullmatch(r"\d{4,6}", t)) or t in places or t.isupper()


